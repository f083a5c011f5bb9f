"""The empirical neural tangent kernel's top eigenvalues, for every ensemble member.

Θ(x, x') = Σ_c J_c(x) J_c(x')ᵀ, the Jacobian J_c of logit c with respect to the parameters, summed
over logits (neural-tangents' ``trace_axes=(-1,)`` convention, as the authors computed it). With
G = [J_1 … J_C] the P × C·n matrix of all logits' Jacobians, Θ = G Gᵀ (P × P, "sample" space)
and GᵀG (C·n × C·n, "parameter" space) share their non-zero eigenvalues; the smaller is used.
Beyond small models neither is formed ("lanczos"): Lanczos on Θ applied as Σ_c J_c (J_cᵀ u) —
one pullback and one forward-mode product per logit, no Jacobian stored — warm-started from the
previous call's eigenvectors, costs a few such products instead of the P·C·n Jacobian and the
Gram's eigendecomposition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dlf.curvature import lanczos
from dlf.curvature.lanczos import LanczosResult, Matvec
from dlf.numerics.objective import EnsembleModel

Method = Literal["auto", "sample", "parameter", "lanczos"]
MAX_JACOBIAN_ELEMENTS = 2**25  # members are processed in chunks below this many Jacobian entries
# auto: a dense Gram up to this many Jacobian entries per member (P·C·n), Lanczos beyond; see
# benchmarks/bench_curvature.py (the spiral at width 100, 543 k entries: Lanczos is faster).
DENSE_MAX_ELEMENTS = 2**16
DEFAULT_TOL = 1e-6  # relative Ritz residual: the top eigenvalue to about 1e-12 where it is apart


@dataclass(frozen=True)
class NTKResult:
    """Top eigenvalues per member and which Gram matrix gave them."""

    values: torch.Tensor  # (M, k) descending
    method: str  # "sample" or "parameter"


def jacobian(model: EnsembleModel, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂ logits / ∂θ for every member and sample: ``(M, P, C, n)``.

    A sample's logits depend only on that sample, so each (member, sample) pair is a C-output
    reverse-mode Jacobian, vectorised over both with ``torch.func.vmap``.
    """

    def logits(theta_row: torch.Tensor, x_row: torch.Tensor) -> torch.Tensor:
        return model.forward(theta_row[None], x_row[None])[0, 0]

    per_sample = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))
    return torch.func.vmap(per_sample, in_dims=(0, None))(theta, x)


def choose_method(n_samples: int, n_classes: int, n_params: int, method: Method = "auto") -> Method:
    """``sample`` (P × P Gram), ``parameter`` (C·n × C·n Gram) or ``lanczos`` (no Gram):
    ``auto`` takes the smaller Gram for small models and Lanczos beyond."""
    if method != "auto":
        return method
    if n_samples * n_classes * n_params > DENSE_MAX_ELEMENTS:
        return "lanczos"
    return smaller_gram(n_samples, n_classes, n_params)


def smaller_gram(n_samples: int, n_classes: int, n_params: int) -> Literal["sample", "parameter"]:
    """``sample`` where P ≤ C·n, else ``parameter``."""
    return "sample" if n_samples <= n_classes * n_params else "parameter"


def gram(jac: torch.Tensor, method: str) -> torch.Tensor:
    """The Gram matrices ``(M, D, D)`` of Jacobians ``(M, P, C, n)`` in the chosen space."""
    if method == "sample":
        return torch.einsum("mpcn,mqcn->mpq", jac, jac)
    g = jac.flatten(2)  # (M, P, C·n): G = [J_1 … J_C]
    return torch.einsum("mpa,mpb->mab", g, g)


def ntk_eigenvalues(
    model: EnsembleModel,
    theta: torch.Tensor,
    x: torch.Tensor,
    k: int = 1,
    method: Literal["auto", "sample", "parameter"] = "auto",
) -> NTKResult:
    """Top-k eigenvalues of the empirical NTK on inputs ``x (P, d)`` for every row of θ, from a
    dense Gram (``auto``: the smaller one).

    Rows whose Jacobian is not finite (diverged members) give NaN.
    """
    n = theta.shape[1]
    n_classes = model.n_out
    chosen = smaller_gram(x.shape[0], n_classes, n) if method == "auto" else method
    chunk = max(1, MAX_JACOBIAN_ELEMENTS // (x.shape[0] * n_classes * n))
    values = []
    for rows in torch.split(theta, chunk):
        g = gram(jacobian(model, rows, x), chosen)
        finite = torch.isfinite(g).flatten(1).all(dim=1)
        eig = torch.linalg.eigvalsh(torch.where(finite[:, None, None], g, 0.0))
        top = eig.flip(-1)[:, :k]
        values.append(torch.where(finite[:, None], top, float("nan")))
    return NTKResult(torch.cat(values), chosen)


def kernel_matvec(model: EnsembleModel, theta: torch.Tensor, x: torch.Tensor) -> Matvec:
    """``u (M, P) ↦ (Θ_m u_m)_m`` with Θ = Σ_c J_c J_cᵀ: a pullback of u on each logit c
    (J_cᵀ u), then a forward-mode product of each, both vectorised over c (the pullback's graph
    is built once, here)."""

    def logits(rows: torch.Tensor) -> torch.Tensor:
        return model.forward(rows, x)

    pullback = torch.func.vjp(logits, theta)[1]
    eye = torch.eye(model.n_out, dtype=theta.dtype, device=theta.device)

    def forward(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(logits, (theta,), (tangent,))[1]

    def apply(u: torch.Tensor) -> torch.Tensor:
        cotangents = u[None, :, :, None] * eye[:, None, None, :]  # (C, M, P, C): u on logit c
        (pulled,) = torch.func.vmap(pullback)(cotangents)  # (C, M, n)
        pushed = torch.func.vmap(forward)(pulled)  # (C, M, P, C)
        return torch.einsum("cmpc->mp", pushed)

    return apply


def ntk_lanczos(
    model: EnsembleModel,
    theta: torch.Tensor,
    x: torch.Tensor,
    k: int,
    previous: torch.Tensor | None,
    tol: float = DEFAULT_TOL,
    generator: torch.Generator | None = None,
) -> LanczosResult:
    """Top-k NTK eigenpairs by Lanczos on :func:`kernel_matvec`, from ``previous`` eigenvectors
    ``(M, k', P)`` (a warm start with a random half, see :func:`lanczos.warm_start`) or cold.

    Rows whose products are not finite (diverged members) give NaN.
    """
    shape = (theta.shape[0], x.shape[0])
    start, warm = lanczos.warm_start(previous, shape, theta, generator)
    if previous is None or previous.shape[1] < k:
        warm = torch.zeros_like(warm)
    min_iter = torch.where(warm, k, lanczos.cold_min_iter(k))
    matvec = kernel_matvec(model, theta, x)
    return lanczos.top_eigenpairs(matvec, start, k, tol, shape[1], generator, min_iter)
