"""What every gradient path shares: the :class:`Gradient` protocol, the loss kinds, accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from dlf.numerics.losses import (
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)

# The built-in loss functions the fast paths know how to differentiate, by kind.
KINDS: dict[Callable[..., torch.Tensor], str] = {
    weighted_cross_entropy: "ce",  # (1/P) Σ_j Γ_{y_j} CE_j
    weighted_squared_error: "se",  # (1/P) Σ_j Γ_{y_j} Σ_i (f_i − δ_{i,y_j})²
    scaled_target_squared_error: "st",  # (1/P) Σ_j Σ_i (f_i − Γ_i δ_{i,y_j})²
}


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Fraction of samples whose arg-max logit (along ``dim``) is the label, per member.

    ``torch.max(...).indices`` is ``argmax`` (the first of equal maxima), and much faster than
    ``argmax`` along a dimension that is not the last."""
    return (torch.max(logits, dim=dim).indices == labels).to(logits.dtype).mean(dim=-1)


class Gradient(Protocol):
    """F and ∂F/∂θ per member, and the step's metrics at the same point."""

    name: str  # kernel, fused or autograd: recorded in the trace

    def __call__(
        self,
        theta: torch.Tensor,
        gamma: torch.Tensor,
        active: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F (R,), ∂F/∂θ (R, n))`` at ``theta (R, n)``; rows not ``active`` get no gradient."""
        ...

    def metrics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Static loss (Γ ≡ 1) and training accuracy ``(R,)`` at the last call's point."""
        ...

    def evaluate(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Static loss and accuracy ``(R,)`` of ``theta`` on ``(x, y)``, without a gradient."""
        ...
