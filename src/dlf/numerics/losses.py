"""The static and dynamical losses, batched over ensemble members.

Every loss maps logits ``(member, sample, class)``, integer labels ``(sample,)`` or
``(member, sample)`` and class weights Γ ``(member, class)`` to one value per member.
Normalisation (documented in ``docs/concepts.md``):

- CE / DCE:  F = (1/P) Σ_j Γ_{y_j} · CE_j            (mean over the P samples; 2021 eq. 1)
- MSE / DMSE1: F = (1/P) Σ_j Γ_{y_j} Σ_i (f_i − δ_{i,y_j})²   (sum over classes; 2024 eq. 3,
  Γ of the sample's own class)
- DMSE2:     F = (1/P) Σ_j Σ_i (f_i − Γ_i δ_{i,y_j})²         (Γ scales the one-hot target; eq. 4)

With Γ ≡ 1 each dynamical loss equals its static counterpart exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A named loss: ``fn(logits, labels, gamma) -> (member,)``, and whether Γ oscillates."""

    name: str
    fn: LossFn
    dynamical: bool
    static_name: str

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor
    ) -> torch.Tensor:
        return self.fn(logits, labels, gamma)


def _labels_for(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return labels.expand(logits.shape[:-1]) if labels.dim() < logits.dim() - 1 else labels


def _sample_weights(gamma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Γ_{y_j} per member and sample, ``(member, sample)``."""
    return torch.gather(gamma, -1, labels)


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """(1/P) Σ_j Γ_{y_j} · (−log softmax(f_j)_{y_j})."""
    labels = _labels_for(logits, labels)
    nll = -torch.gather(F.log_softmax(logits, dim=-1), -1, labels.unsqueeze(-1)).squeeze(-1)
    return (_sample_weights(gamma, labels) * nll).mean(dim=-1)


def weighted_squared_error(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """DMSE1: (1/P) Σ_j Γ_{y_j} Σ_i (f_i − onehot_i)²."""
    labels = _labels_for(logits, labels)
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    per_sample = ((logits - target) ** 2).sum(dim=-1)
    return (_sample_weights(gamma, labels) * per_sample).mean(dim=-1)


def scaled_target_squared_error(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """DMSE2: (1/P) Σ_j Σ_i (f_i − Γ_i · onehot_i)²."""
    labels = _labels_for(logits, labels)
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype) * gamma.unsqueeze(-2)
    return ((logits - target) ** 2).sum(dim=-1).mean(dim=-1)


BUILTIN_LOSSES = (
    Loss("ce", weighted_cross_entropy, dynamical=False, static_name="ce"),
    Loss("dce", weighted_cross_entropy, dynamical=True, static_name="ce"),
    Loss("mse", weighted_squared_error, dynamical=False, static_name="mse"),
    Loss("dmse1", weighted_squared_error, dynamical=True, static_name="mse"),
    Loss("dmse2", scaled_target_squared_error, dynamical=True, static_name="mse"),
)
