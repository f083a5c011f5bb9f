"""The function being minimised, F(θ; Γ) on the training set, batched over parameter rows.

Curvature code and analyzers evaluate the loss at points other than the trainer's (Lanczos,
landscape grids); they all go through this one object so that they measure exactly what the
trainer minimises.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from dlf.numerics.losses import Loss


@dataclass(frozen=True)
class Objective:
    """Model, loss and training data bound together; rows of θ are independent members."""

    model: Any  # MLP or ModuleModel: forward(theta, x), init, n_params, n_out
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
