"""The loss on a plane through θ: grid evaluation in chunks, and coordinates of points in the plane.

Grid points are rows of θ, so one forward pass of the objective evaluates a whole chunk of the
grid; the chunk is sized so that the hidden activations of a pass stay within a memory budget,
which keeps wide networks (and big grids) from exhausting memory.
"""

from __future__ import annotations

import torch

from dlf import plugin

CHUNK_BYTES = 64 * 2**20  # activation memory one forward pass of grid points may use


def rows_per_chunk(objective: plugin.Objective, budget_bytes: int = CHUNK_BYTES) -> int:
    """How many θ rows fit in ``budget_bytes`` of forward-pass memory (at least one).

    Per row the pass holds the row itself and, per layer, about three (sample × units) tensors
    (pre-activation, bias sum, activation; logits and loss terms for the last layer).
    """
    model = objective.model
    units = sum(model.hidden) + model.n_out
    per_row = model.n_params + 3 * len(objective.y) * units
    itemsize = objective.x.element_size()
    return max(1, budget_bytes // (per_row * itemsize))


def evaluate_plane(
    objective: plugin.Objective,
    center: torch.Tensor,
    directions: torch.Tensor,
    gamma: torch.Tensor,
    coords: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """F(center + a·d₁ + b·d₂; Γ) for a, b in ``coords``: ``(len(coords), len(coords))``, [a, b].

    ``center (n,)``, ``directions (2, n)``, ``gamma (C,)`` the frozen class weights; ``chunk``
    grid points per forward pass.
    """
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    ab = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    values = torch.empty(len(ab), dtype=center.dtype, device=center.device)
    with torch.no_grad():
        for start in range(0, len(ab), chunk):
            rows = center + ab[start : start + chunk] @ directions
            values[start : start + len(rows)] = objective(rows, gamma.expand(len(rows), -1))
    return values.reshape(len(coords), len(coords))


def plane_coordinates(
    displacement: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (a, b) with a·d₁ + b·d₂ ≈ ``displacement (n,)``, and the distance left over.

    For orthonormal directions (a, b) are the dot products; the Gram solve makes the coordinates
    match the grid's (a, b) also for directions that are not (filter-normalised random ones).
    """
    gram = directions @ directions.T
    ab = torch.linalg.solve(gram, directions @ displacement)
    residual = torch.linalg.vector_norm(displacement - ab @ directions)
    return ab, residual
