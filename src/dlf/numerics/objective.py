"""The function being minimised, F(θ; Γ) on the training set, batched over parameter rows.

Curvature code and analyzers evaluate the loss at points other than the trainer's (Lanczos,
landscape grids); they all go through this one object so that they measure exactly what the
trainer minimises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from dlf.numerics.losses import Loss


class EnsembleModel(Protocol):
    """What the core asks of a model: every member is one row of a flat θ ``(member, n)``.

    The built-in ``MLP`` and ``ModuleModel`` (any ``torch.nn.Module`` run over θ with
    ``torch.func``) satisfy it; a plugin's model factory returns one of those or its own class
    with these members.
    """

    @property
    def n_params(self) -> int:
        """Parameters of one member (the length of a row of θ)."""
        ...

    @property
    def n_out(self) -> int:
        """Outputs (classes) per sample."""
        ...

    @property
    def width(self) -> int:
        """The first hidden layer's width, recorded in the trace (0 where there is none)."""
        ...

    @property
    def hidden(self) -> tuple[int, ...]:
        """Units per sample of each hidden layer: the activations' share of memory estimates."""
        ...

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(member, sample, n_out)`` of every row of ``theta`` on ``x``."""
        ...

    def init(
        self,
        seeds: Sequence[int],
        scheme: str = "standard",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Initial θ ``(len(seeds), n_params)``, each row drawn from its own seed."""
        ...

    def unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W, b)`` views per layer of ``theta (n,)`` (filter-normalised directions)."""
        ...


@dataclass(frozen=True)
class Objective:
    """Model, loss and training data bound together; rows of θ are independent members."""

    model: EnsembleModel
    loss: Loss
    static: Loss
    x: torch.Tensor
    y: torch.Tensor

    def logits(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward(theta, self.x if x is None else x)

    def __call__(self, theta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """F per row of ``theta (R, n)`` with weights ``gamma (R, C)``: ``(R,)``."""
        return self.loss(self.logits(theta), self.y, gamma)

    def static_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The static counterpart (Γ ≡ 1) per row."""
        ones = torch.ones(theta.shape[0], self.n_classes, dtype=theta.dtype, device=theta.device)
        return self.static(self.logits(theta), self.y, ones)

    def restricted(self, samples: torch.Tensor) -> Objective:
        """The same model and losses on the training samples ``samples`` (indices) only."""
        samples = samples.to(self.x.device)
        return replace(self, x=self.x[samples], y=self.y[samples])

    @property
    def n_classes(self) -> int:
        return self.model.n_out
