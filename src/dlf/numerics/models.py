"""Ensemble MLPs whose parameters live in one flat ``(member, n_params)`` tensor.

Keeping every member's parameters in one row of a single tensor makes the ensemble a batch: the
forward pass is a batched matrix product, gradient descent is one fused update, and curvature code
(Hessian-vector products, Lanczos, landscape slices) works on plain vectors per member.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
}
INITS = ("standard", "glorot")


@dataclass(frozen=True)
class MLP:
    """A fully connected network ``in → hidden… → out`` applied to many members at once."""

    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    activation: str = "relu"

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        dims = [self.n_in, *self.hidden, self.n_out]
        return list(itertools.pairwise(dims))

    @property
    def n_params(self) -> int:
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.layer_sizes)

    @property
    def width(self) -> int:
        """The first hidden layer's width (the papers' "network width")."""
        return self.hidden[0] if self.hidden else 0

    def unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views ``(W, b)`` per layer of ``theta[..., n]``; W is ``(..., fan_in, fan_out)``."""
        lead = theta.shape[:-1]
        layers, offset = [], 0
        for fan_in, fan_out in self.layer_sizes:
            w = theta[..., offset : offset + fan_in * fan_out].reshape(*lead, fan_in, fan_out)
            offset += fan_in * fan_out
            b = theta[..., offset : offset + fan_out]
            offset += fan_out
            layers.append((w, b))
        return layers

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(member, sample, out)`` for ``theta (member, n)``; ``x`` shared or per member.

        ``x`` is ``(sample, in)`` (the same inputs for every member) or ``(member, sample, in)``.
        """
        act = ACTIVATIONS[self.activation]
        layers = self.unflatten(theta)
        h = x
        for i, (w, b) in enumerate(layers):
            h = torch.matmul(h, w) + b.unsqueeze(-2)
            if i < len(layers) - 1:
                h = act(h)
        return h

    def init(
        self,
        seeds: Sequence[int],
        scheme: str = "standard",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Initial parameters ``(len(seeds), n_params)``, each row drawn from its own seed.

        ``standard``: W ~ N(0, 1/fan_in), b = 0 (the 2021 notebooks).
        ``glorot``: W ~ N(0, 2/(fan_in+fan_out)), b ~ N(0, 0.01²) (the 2022 update).
        A member's row depends only on its seed, so a member of an ensemble starts exactly where
        the same seed trained alone starts.
        """
        if scheme not in INITS:
            raise ValueError(f"unknown init {scheme!r}; allowed: {', '.join(INITS)}")
        rows = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            parts = []
            for fan_in, fan_out in self.layer_sizes:
                if scheme == "standard":
                    w_std, b_std = 1.0 / math.sqrt(fan_in), 0.0
                else:
                    w_std, b_std = math.sqrt(2.0 / (fan_in + fan_out)), 0.01
                parts.append(
                    torch.randn(fan_in * fan_out, generator=gen, dtype=torch.float64) * w_std
                )
                parts.append(torch.randn(fan_out, generator=gen, dtype=torch.float64) * b_std)
            rows.append(torch.cat(parts))
        return torch.stack(rows).to(dtype=dtype, device=device)
