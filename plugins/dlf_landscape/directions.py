"""The two directions spanning a slice when they are not Hessian eigenvectors, and the curvature
along any pair of directions.

- Random directions with filter normalisation (Li et al. 2018, "Visualizing the loss landscape of
  neural nets"): a Gaussian direction is rescaled neuron by neuron so that the incoming weights of
  each unit have the norm of that unit's weights in θ, which makes slices of networks with
  different weight scales comparable. Biases get a zero component (the reference code's option
  for biases), so these slices move weights only. The second direction is orthogonalised against
  the first after normalising and given back its norm.
- Principal components of the recent trajectory: the top-2 right singular vectors of the
  displacements θ_s − θ_t of recent snapshots from the slice's point, i.e. the plane through θ_t
  that best fits where training has just been.
"""

from __future__ import annotations

import torch

from dlf import plugin
from dlf.plugin import EnsembleModel


def filter_normalized(
    model: EnsembleModel, theta: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A random direction ``(n,)`` whose per-neuron weight norms equal those of ``theta (n,)``.

    A neuron's incoming weights are one column of its layer's ``W (fan_in, fan_out)``; the bias
    entries are zero.
    """
    direction = torch.randn(theta.shape, generator=generator, dtype=torch.float64).to(theta)
    # unflatten of a contiguous vector returns views, so the rescaling below edits ``direction``.
    for (w_dir, b_dir), (w_theta, _) in zip(
        model.unflatten(direction), model.unflatten(theta), strict=True
    ):
        w_dir.mul_(w_theta.norm(dim=0) / w_dir.norm(dim=0))
        b_dir.zero_()
    return direction


def filter_normalized_pair(
    model: EnsembleModel, theta: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Two filter-normalised random directions ``(2, n)``, the second made orthogonal to the first.

    Orthogonalising changes the second direction's length; it is rescaled to its normalised length
    so that both axes keep the filter-normalised scale.
    """
    first = filter_normalized(model, theta, generator)
    second = filter_normalized(model, theta, generator)
    length = second.norm()
    second = second - (second @ first) / (first @ first) * first
    return torch.stack([first, second * (length / second.norm())])


def principal_plane(displacements: torch.Tensor) -> torch.Tensor:
    """The top-2 principal directions ``(2, n)`` (orthonormal) of ``displacements (S, n)``, S ≥ 2.

    Uncentred: the plane through the slice's point θ_t (the origin of the displacements) that
    captures most of the recent trajectory's squared distance from θ_t.
    """
    _, _, vh = torch.linalg.svd(displacements, full_matrices=False)
    return vh[:2]


def curvature_along(
    curvature: plugin.Curvature, members: list[int], directions: torch.Tensor, n_members: int
) -> torch.Tensor:
    """Rayleigh quotients dᵀH d / dᵀd of the selected members' ``directions (L, 2, n)``: ``(L, 2)``.

    One Hessian-vector product per direction index serves all selected members at once.
    """
    quotients = []
    for j in range(directions.shape[1]):
        block = directions.new_zeros(n_members, directions.shape[-1])
        block[members] = directions[:, j]
        hv = curvature.hvp(block)[members]
        d = directions[:, j]
        quotients.append((hv * d).sum(dim=-1) / (d * d).sum(dim=-1))
    return torch.stack(quotients, dim=-1)
