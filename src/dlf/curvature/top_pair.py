"""λmax alone (k = 1) of every member by Lanczos, with few operations per step on a CPU.

The algorithm is that of :func:`dlf.curvature.lanczos.top_eigenpairs` for k = 1 — full
re-orthogonalisation; a member stops once its Ritz residual β_j·|s_j| ≤ tol·max|Ritz value| —
written for a small fixed cost per step. On a CPU at the papers' size (603 parameters) a torch op
costs some 5–10 µs whatever its size and a product of the C kernel some 60 µs: in torch the
bookkeeping of one λmax sample cost ≈ 20 training steps where its ≈ 3.7 products cost ≈ 2
(docs/performance.md, issue 23). So where the product is the C kernel's (the papers' network),
the kernel runs the whole loop (``mlp_top_pair`` in ``dlf/kernels/mlp_hvp.c``: products, the
tridiagonal's top pair by Jacobi rotations, the tests) in one call; elsewhere on a CPU the loop
runs in NumPy (about 1 µs an op); on other devices in torch.

On breakdown (β ≈ 0: the Krylov space is invariant) a member stops: its top Ritz value is then
an eigenvalue with residual ≈ 0 — the top one, unless the start had no component along the top
eigenvector, which the random half of the helper's warm starts rules out (as in the torch loop).
"""

from __future__ import annotations

import numpy as np
import torch

from dlf.curvature import lanczos
from dlf.curvature.kernel_hvp import KernelHVP, top_pair_function
from dlf.curvature.lanczos import BREAKDOWN, LanczosResult, Matvec


def top_eigenpair(
    matvec: Matvec,
    start: torch.Tensor,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    min_iter: int | torch.Tensor = 0,
    first: torch.Tensor | None = None,
) -> LanczosResult:
    """``top_eigenpairs(…, k=1, …)`` with the same arguments (see :func:`solve`)."""
    return solve(matvec, start, tol, max_iter, generator, min_iter, first)[0]


def solve(
    matvec: Matvec,
    start: torch.Tensor,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    min_iter: int | torch.Tensor = 0,
    first: torch.Tensor | None = None,
) -> tuple[LanczosResult, torch.Tensor]:
    """The top eigenpair as ``top_eigenpairs(…, k=1, …)`` computes it, and the first product
    A·start/‖start‖ (``first`` if given), which a tracker turns into a power step.

    Where ``matvec`` is the C kernel's product, its own loop runs (products and bookkeeping in
    one call); elsewhere on a CPU the NumPy loop; on other devices torch's."""
    if isinstance(matvec, KernelHVP) and top_pair_function(start.dtype) is not None:
        rows = torch.as_tensor(min_iter, dtype=torch.int64).expand(len(start))
        return matvec.top_pair(start.detach(), tol, max_iter, rows, first)
    if start.device.type != "cpu":
        if first is None:
            first = matvec(start / start.norm(dim=-1, keepdim=True))
        result = lanczos.top_eigenpairs(matvec, start, 1, tol, max_iter, generator, min_iter, first)
        return result, first
    least = np.asarray(min_iter.cpu().numpy() if torch.is_tensor(min_iter) else min_iter)
    return _numpy_top_pair(matvec, start.detach().numpy(), tol, max_iter, least, first)


def _apply(matvec: Matvec, v: np.ndarray) -> np.ndarray:
    return matvec(torch.from_numpy(v)).detach().numpy()


def _orthogonalise(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w (M, n)`` less its projection on the orthonormal basis ``q (j, M, n)``, twice."""
    q = q.transpose(1, 0, 2)
    for _ in range(2):
        w = w - np.matmul(np.matmul(q, w[:, :, None]).transpose(0, 2, 1), q)[:, 0]
    return w


def _fail_non_finite(
    w: np.ndarray, j: int, matvecs: np.ndarray, done: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Members whose product ``w`` is not finite stop at product ``j + 1`` (their NaN result);
    their rows of ``w`` become 0 so the others' arithmetic stays finite."""
    failed = ~np.isfinite(w.sum(axis=1))
    matvecs[failed & ~done] = j + 1
    return np.where(failed[:, None], 0.0, w), done | failed


def _ritz_pairs(t: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of each member's leading ``(j + 1) × (j + 1)`` block of T (1 × 1: (α, 1))."""
    if j:
        return np.linalg.eigh(t[:, : j + 1, : j + 1])
    return t[:, :1, 0], np.ones((len(t), 1, 1), t.dtype)


def _numpy_top_pair(
    matvec: Matvec,
    start: np.ndarray,
    tol: float,
    max_iter: int,
    min_iter: np.ndarray,
    first: torch.Tensor | None,
) -> tuple[LanczosResult, torch.Tensor]:
    """The Lanczos loop of :func:`solve` on NumPy arrays, T ``(M, j, j)`` filled in
    place and solved whole (``eigh``) at each step; the basis grows by doubling.

    Breakdown (β_j ≤ BREAKDOWN·‖A‖: an invariant space) implies residual β_j·|s_j| ≤ tol·‖A‖,
    so it needs its own test only while ``min_iter`` holds a member back."""
    m, n = start.shape
    last, waiting = min(max(max_iter, 1), n), int(min_iter.max(initial=0))
    basis = np.empty((min(last, 8), m, n), start.dtype)
    basis[0] = start / np.sqrt(np.einsum("mn,mn->m", start, start))[:, None]
    t = np.zeros((m, last, last), start.dtype)
    values, residuals = np.full(m, np.nan, start.dtype), np.full(m, np.nan, start.dtype)
    vectors = np.full((m, n), np.nan, start.dtype)
    matvecs, done = np.zeros(m, np.int64), np.zeros(m, bool)
    tiny = np.finfo(start.dtype).tiny
    for j in range(last):
        w = first.detach().numpy() if j == 0 and first is not None else _apply(matvec, basis[j])
        if j == 0:
            product = w
        if not np.isfinite(w.sum()):  # some member's product is not finite: it fails
            w, done = _fail_non_finite(w, j, matvecs, done)
        t[:, j, j] = np.einsum("mn,mn->m", basis[j], w)
        w = _orthogonalise(basis[: j + 1], w)
        b = np.sqrt(np.einsum("mn,mn->m", w, w))
        ritz, s = _ritz_pairs(t, j)
        norm = np.abs(ritz).max(axis=1)  # ‖A‖ estimated by the largest |Ritz value|
        residual = b * np.abs(s[:, j, -1])
        stop = residual <= tol * norm
        if j + 1 < waiting:
            stop &= (j + 1 >= min_iter) | (b <= BREAKDOWN * norm)
        new = (stop | (j + 1 == last)) & ~done
        if new.any():
            y = np.einsum("mj,jmn->mn", s[new, :, -1], basis[: j + 1, new])
            y /= np.sqrt(np.einsum("mn,mn->m", y, y))[:, None]
            values[new], residuals[new], vectors[new] = ritz[new, -1], residual[new], y
            matvecs[new] = j + 1
            done |= new
            if done.all():
                break
        t[:, j, j + 1] = t[:, j + 1, j] = b
        if j + 1 == len(basis):
            more = min(len(basis), last - len(basis))
            basis = np.concatenate([basis, np.empty_like(basis[:more])])
        basis[j + 1] = w / np.maximum(b, tiny)[:, None]
    result = LanczosResult(
        torch.from_numpy(values)[:, None],
        torch.from_numpy(vectors)[:, None],
        torch.from_numpy(residuals)[:, None],
        torch.from_numpy(matvecs),
    )
    return result, torch.from_numpy(product)
