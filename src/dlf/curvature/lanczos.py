"""Batched Lanczos for symmetric operators given as a batched matvec: top eigenpairs and densities.

Every member m has its own symmetric operator A_m on R^n (a Hessian, a planted test matrix…);
``matvec`` maps a block of vectors ``(M, n)`` to ``(A_m v_m)_m`` in one call, so one iteration of
the loop below serves all members. Each member keeps its own Lanczos coefficients α, β and stops
on its own Ritz residual; the basis is fully re-orthogonalised, which keeps Ritz values of
clustered or repeated eigenvalues honest at the small Krylov dimensions used here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]

BREAKDOWN = 1e-12  # β below this fraction of ‖A‖ means the Krylov space is invariant


@dataclass(frozen=True)
class LanczosResult:
    """Top-k Ritz pairs per member; rows whose matvec went non-finite are NaN."""

    values: torch.Tensor  # (M, k) descending
    vectors: torch.Tensor  # (M, k, n) unit norm
    residuals: torch.Tensor  # (M, k) ‖A y − λ y‖ (the Lanczos estimate β_j |s_j|)
    matvecs: torch.Tensor  # (M,) matrix-vector products the member used

    def top(self, k: int) -> LanczosResult:
        """The first ``k`` pairs (the result for a smaller k)."""
        return LanczosResult(
            self.values[:, :k], self.vectors[:, :k], self.residuals[:, :k], self.matvecs
        )


@dataclass(frozen=True)
class SpectralDensity:
    """Gauss quadrature of the spectral measure per member and probe (stochastic Lanczos).

    The density of eigenvalues of A_m is approximated by the average over probes of
    Σ_l weights[m, p, l] · δ(λ − nodes[m, p, l]); each probe's weights sum to one.
    """

    nodes: torch.Tensor  # (M, probes, order)
    weights: torch.Tensor  # (M, probes, order)

    def smoothed(self, grid: torch.Tensor, width: float) -> torch.Tensor:
        """The density on ``grid (G,)`` broadened by Gaussians of standard deviation ``width``."""
        diff = grid[None, None, None, :] - self.nodes[..., None]
        kernel = torch.exp(-0.5 * (diff / width) ** 2) / (width * (2 * torch.pi) ** 0.5)
        return (self.weights[..., None] * kernel).sum(dim=2).mean(dim=1)


def random_vectors(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian unit vectors along the last axis, drawn on the CPU (reproducible), then moved."""
    v = torch.randn(shape, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    return v.to(dtype=like.dtype, device=like.device)


def cold_min_iter(k: int) -> int:
    """Krylov dimension a random start must reach before it may stop: ARPACK's default ncv.

    From a random vector, a Ritz value can settle on λ_{k+1} before λ_k has emerged when the two
    are close (its residual is small, but it is the wrong eigenvalue); a larger space prevents it.
    """
    return max(2 * k + 1, 20)


def warm_start(
    previous: torch.Tensor | None,
    shape: tuple[int, int],
    like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A start vector per member, Σ of the previous eigenvectors ``(M, k, n)`` plus a random one.

    The Krylov space of that sum contains the old top-k subspace after k steps, so a slowly
    changing operator converges in a few more. The random half (equal weight) keeps every other
    direction in the space: without it a nearly invariant old subspace is accepted at j = k with
    residual ≈ 0 while a new top eigenvector orthogonal to it (eigenvalues crossing) is missed.
    Rows without usable previous vectors (first call, non-finite, or a shape change) start from
    the random vector alone. Returns the start ``(M, n)`` and which rows are warm ``(M,)``.
    """
    start = random_vectors(shape, like, generator)
    if previous is None or previous.shape[0] != shape[0] or previous.shape[-1] != shape[1]:
        return start, torch.zeros(shape[0], dtype=torch.bool, device=like.device)
    guess = previous.to(like).sum(dim=1)
    norm = guess.norm(dim=-1, keepdim=True)
    usable = torch.isfinite(norm) & (norm > 0)
    mixed = guess / torch.where(usable, norm, 1.0) + start
    warm = torch.where(usable, mixed / mixed.norm(dim=-1, keepdim=True), start)
    return warm, usable[:, 0]


def _orthogonalise(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w (M, n)`` less its projection on the orthonormal rows of ``q (M, j, n)``, twice
    (Kahan's "twice is enough"). Batched products: a fifth of einsum's cost at these sizes."""
    for _ in range(2):
        w = w - torch.bmm(torch.bmm(q, w.unsqueeze(-1)).transpose(1, 2), q).squeeze(1)
    return w


def _tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Symmetric tridiagonal matrices ``(M, j, j)`` from α ``(M, j)`` and β ``(M, j−1)``."""
    t = torch.diag_embed(alpha)
    return t + torch.diag_embed(beta, offset=1) + torch.diag_embed(beta, offset=-1)


@dataclass
class _Krylov:
    """The state after j Lanczos steps: orthonormal basis Q, coefficients α, β, and ‖w_j‖."""

    basis: torch.Tensor  # (M, j, n)
    alpha: torch.Tensor  # (M, j)
    beta: torch.Tensor  # (M, j−1) off-diagonal of T
    last_beta: torch.Tensor  # (M,) ‖w_j‖: couples T to the next (unbuilt) basis vector
    finite: torch.Tensor  # (M,) False once a member's matvec was non-finite

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and eigenvectors of T, batched over members."""
        return torch.linalg.eigh(_tridiagonal(self.alpha, self.beta))


def _iterate(
    matvec: Matvec,
    start: torch.Tensor,
    steps: int,
    generator: torch.Generator | None,
    first: torch.Tensor | None = None,
) -> Iterator[_Krylov]:
    """Lanczos with full re-orthogonalisation; yields the state after each of ``steps`` steps.

    ``first``, if given, is A applied to the normalised start, already computed by the caller (a
    tracker that tried the start alone). On breakdown (an invariant subspace found) the next
    basis vector is a random one orthogonal to the basis and the coupling β is 0, so T stays
    exact and the process can go on. The basis grows by doubling: most solves stop after a few of
    ``steps``.
    """
    m, n = start.shape
    steps = min(steps, n)
    basis = start.new_empty(m, min(steps, 8) + 1, n)
    alpha = start.new_zeros(m, steps)
    beta = start.new_zeros(m, steps)
    basis[:, 0] = start / start.norm(dim=-1, keepdim=True)
    finite = torch.ones(m, dtype=torch.bool, device=start.device)
    scale = start.new_zeros(m)
    for j in range(steps):
        w = first if j == 0 and first is not None else matvec(basis[:, j])
        finite = finite & torch.isfinite(w.sum(dim=-1))  # any NaN or ±inf makes the sum so
        if not bool(finite.all()):
            w = torch.where(finite[:, None], w, 0.0)
        q = basis[:, : j + 1]
        alpha[:, j] = (basis[:, j] * w).sum(dim=-1)
        w = _orthogonalise(q, w)
        b = w.norm(dim=-1)
        scale = torch.maximum(scale, alpha[:, j].abs() + b)
        yield _Krylov(q, alpha[:, : j + 1], beta[:, :j], b, finite)
        if j + 1 == steps:
            return
        broken = b <= BREAKDOWN * scale.clamp_min(torch.finfo(w.dtype).tiny)
        if bool(broken.any()):
            fresh = _orthogonalise(q, random_vectors((m, n), w, generator))
            fresh = fresh / fresh.norm(dim=-1, keepdim=True)
            w = torch.where(broken[:, None], fresh, w / torch.where(broken, 1.0, b)[:, None])
            b = torch.where(broken, 0.0, b)
        else:
            w = w / b[:, None]
        beta[:, j] = b
        if j + 2 > basis.shape[1]:
            grown = start.new_empty(m, min(2 * basis.shape[1], steps + 1), n)
            grown[:, : j + 1] = basis[:, : j + 1]
            basis = grown
        basis[:, j + 1] = w


def top_eigenpairs(
    matvec: Matvec,
    start: torch.Tensor,
    k: int,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    min_iter: int | torch.Tensor = 0,
    first: torch.Tensor | None = None,
) -> LanczosResult:
    """The k algebraically largest eigenpairs of every member's operator.

    ``start (M, n)`` is each member's first Lanczos vector (see :func:`warm_start`). A member
    stops once each of its top-k Ritz pairs has residual ‖A y − λ y‖ ≤ tol · ‖A‖ (‖A‖ estimated
    by the largest |Ritz value|) and it has used ``min_iter`` matvecs (an int or one per member,
    see :func:`cold_min_iter`), or after ``max_iter``; it then keeps that result while the others
    go on; ``first`` is A·start if the caller has it (counted as a matvec, see :func:`_iterate`).
    Eigenvalue errors are of order residual² / gap; eigenvalues closer together than
    about tol · ‖A‖ cannot be told apart, so one of them may be missed: lower tol to resolve them.
    """
    m, n = start.shape
    k = min(k, n)
    nan = torch.full((m, k), float("nan"), dtype=start.dtype, device=start.device)
    values, residuals = nan.clone(), nan.clone()
    vectors = torch.full((m, k, n), float("nan"), dtype=start.dtype, device=start.device)
    matvecs = torch.zeros(m, dtype=torch.long, device=start.device)
    done = torch.zeros(m, dtype=torch.bool, device=start.device)
    last = min(max(max_iter, k), n)
    least = torch.as_tensor(min_iter, device=start.device)
    for state in _iterate(matvec, start, last, generator, first):
        j = state.alpha.shape[1]
        if not bool(state.finite.all()):
            failed = ~state.finite & ~done
            matvecs = torch.where(failed, j, matvecs)
            done = done | failed
        if j < k:
            continue
        theta, s = state.ritz()
        top_theta, top_s = theta.flip(-1)[:, :k], s.flip(-1)[:, :, :k]
        res = state.last_beta[:, None] * top_s[:, -1, :].abs()
        norm = theta.abs().amax(dim=-1).clamp_min(torch.finfo(theta.dtype).tiny)
        small = (res <= tol * norm[:, None]).all(dim=-1)
        converged = (small & (j >= least)) | (j == last)
        new = converged & ~done
        if bool(new.any()):
            ritz_vectors = torch.bmm(top_s.transpose(1, 2), state.basis)
            ritz_vectors = ritz_vectors / ritz_vectors.norm(dim=-1, keepdim=True)
            values = torch.where(new[:, None], top_theta, values)
            residuals = torch.where(new[:, None], res, residuals)
            vectors = torch.where(new[:, None, None], ritz_vectors, vectors)
            matvecs = torch.where(new, j, matvecs)
            done = done | new
        if bool(done.all()):
            break
    return LanczosResult(values, vectors, residuals, matvecs)


def spectral_density(
    matvec: Matvec,
    shape: tuple[int, int],
    like: torch.Tensor,
    probes: int,
    order: int,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``order`` Lanczos steps from each of ``probes`` random probes.

    For a unit probe v, Σ_l w_l θ_l^p = vᵀ A^p v exactly for p < 2·order, and E[vᵀ A^p v] over
    Rademacher/Gaussian probes is tr(A^p)/n, so the averaged quadrature estimates the spectral
    density. Probes run one after another; each step serves all members.
    """
    nodes, weights = [], []
    for _ in range(probes):
        signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2 - 1
        start = signs.to(dtype=like.dtype, device=like.device)
        *_, state = _iterate(matvec, start, order, generator)
        theta, s = state.ritz()
        w = s[:, 0, :] ** 2
        bad = ~state.finite
        nodes.append(torch.where(bad[:, None], float("nan"), theta))
        weights.append(torch.where(bad[:, None], float("nan"), w))
    return SpectralDensity(torch.stack(nodes, dim=1), torch.stack(weights, dim=1))
