"""Shared helpers of the curvature, Lanczos and NTK tests: tiny objectives and planted spectra."""

from __future__ import annotations

import torch

from dlf.numerics.data import SpiralOptions, spiral
from dlf.numerics.losses import BUILTIN_LOSSES
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

LOSSES = {loss.name: loss for loss in BUILTIN_LOSSES}


def tiny_objective(
    loss: str = "dce", width: int = 6, points: int = 12, dtype: torch.dtype = torch.float64
) -> Objective:
    """A 2 → width → 3 MLP on a small spiral: few enough parameters for dense Hessians."""
    data = spiral(SpiralOptions(points_per_class=points))
    model = MLP(2, (width,), 3)
    x = torch.tensor(data.x_train, dtype=dtype)
    y = torch.tensor(data.y_train)
    return Objective(model, LOSSES[loss], LOSSES[LOSSES[loss].static_name], x, y)


def tiny_gamma(members: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unequal class weights (normalised to sum to C = 3), different per member."""
    raw = torch.tensor([[1.0 + 3 * m, 1.0, 1.0 + m] for m in range(members)], dtype=dtype)
    return 3 * raw / raw.sum(dim=1, keepdim=True)


def planted_operator(spectra: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric matrices ``(M, n, n)`` with the given eigenvalues ``(M, n)`` in random bases.

    Returns the matrices and their eigenvectors ``(M, n, n)`` (columns, in the order given).
    """
    gen = torch.Generator().manual_seed(seed)
    m, n = spectra.shape
    q, _ = torch.linalg.qr(torch.randn(m, n, n, generator=gen, dtype=torch.float64))
    matrices = q @ torch.diag_embed(spectra.double()) @ q.transpose(1, 2)
    return (matrices + matrices.transpose(1, 2)) / 2, q
