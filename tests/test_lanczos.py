"""Batched Lanczos on explicit symmetric operators with planted spectra, checked exactly."""

from __future__ import annotations

import pytest
import torch

from dlf.curvature.lanczos import (
    cold_min_iter,
    random_vectors,
    spectral_density,
    top_eigenpairs,
    warm_start,
)
from tests.curvature_fixtures import planted_operator


def matvec_of(matrices: torch.Tensor):
    return lambda v: torch.einsum("mij,mj->mi", matrices, v)


def cold_start(m: int, n: int, seed: int = 1) -> torch.Tensor:
    return random_vectors(
        (m, n), torch.empty(0, dtype=torch.float64), torch.Generator().manual_seed(seed)
    )


def test_planted_spectra_including_near_degenerate_and_negative_tops():
    n = 60
    gen = torch.Generator().manual_seed(3)
    bulk = torch.rand(3, n - 3, generator=gen, dtype=torch.float64) * 2 - 1
    tops = torch.tensor(
        [
            [5.0, 5.0 - 1e-7, 4.0],  # two nearly equal top eigenvalues
            [2.0, 1.5, 1.4],
            [-1.5, -1.6, -1.7],  # all negative: the largest is the least negative
        ],
        dtype=torch.float64,
    )
    bulk[2] = bulk[2] - 10.0  # member 2: spectrum in [-11, -1.5], ‖A‖ = 11 from the bottom
    spectra = torch.cat([tops, bulk], dim=1)
    a, q = planted_operator(spectra)
    result = top_eigenpairs(matvec_of(a), cold_start(3, n), k=3, tol=1e-10, max_iter=n)
    torch.testing.assert_close(result.values, tops, rtol=1e-10, atol=0)
    # Near-degenerate pair: individual vectors are ill-defined, their span is not.
    span = q[0][:, :2]
    for i in range(2):
        y = result.vectors[0, i]
        assert float((span.T @ y).norm()) == pytest.approx(1.0, abs=1e-8)
    for m in (1, 2):
        overlaps = (q[m][:, :3].T * result.vectors[m]).sum(dim=1).abs()
        torch.testing.assert_close(overlaps, torch.ones(3, dtype=torch.float64), atol=1e-8, rtol=0)


def test_residuals_are_true_residuals_and_below_tolerance():
    n, tol = 80, 1e-6
    spectra = torch.linspace(-2, 3, n, dtype=torch.float64).repeat(2, 1)
    spectra[1] = spectra[1] ** 3
    a, _ = planted_operator(spectra, seed=5)
    result = top_eigenpairs(matvec_of(a), cold_start(2, n), k=3, tol=tol, max_iter=n)
    true = (
        torch.einsum("mij,mkj->mki", a, result.vectors) - result.values[..., None] * result.vectors
    ).norm(dim=-1)
    torch.testing.assert_close(result.residuals, true, rtol=1e-3, atol=1e-13)
    norms = spectra.abs().amax(dim=1, keepdim=True)
    assert bool((true <= 1.01 * tol * norms).all())
    torch.testing.assert_close(result.vectors.norm(dim=-1), torch.ones(2, 3, dtype=torch.float64))
    assert bool((result.matvecs < n).all())


def test_invariant_start_and_restart_after_breakdown():
    n = 30
    spectra = torch.linspace(0, 10, n, dtype=torch.float64).flip(0)[None]
    a, q = planted_operator(spectra, seed=2)
    top3 = q[:, :, :3].transpose(1, 2)  # (1, 3, n)
    exact = top_eigenpairs(matvec_of(a), warm_start(top3, (1, n), a)[0], k=3, tol=1e-10)
    assert int(exact.matvecs[0]) > 3  # the random half of the start leaves the top-3 subspace
    torch.testing.assert_close(exact.values, spectra[:, :3], rtol=1e-12, atol=0)
    # Start on one eigenvector: Lanczos breaks down after one step and must restart to find 3.
    single = top_eigenpairs(matvec_of(a), q[:, :, 0], k=3, tol=1e-10, max_iter=n)
    torch.testing.assert_close(single.values, spectra[:, :3], rtol=1e-10, atol=0)


def test_warm_start_from_a_nearby_operator_needs_fewer_matvecs():
    n, m = 100, 4
    gen = torch.Generator().manual_seed(0)
    spectra = torch.rand(m, n, generator=gen, dtype=torch.float64)
    spectra[:, :3] += torch.tensor([3.0, 2.5, 2.0], dtype=torch.float64)
    a, _ = planted_operator(spectra, seed=9)
    before = top_eigenpairs(matvec_of(a), cold_start(m, n), k=3, tol=1e-8, max_iter=n)
    noise = torch.randn(m, n, n, generator=gen, dtype=torch.float64) * 1e-4
    moved = a + (noise + noise.transpose(1, 2)) / 2
    cold = top_eigenpairs(matvec_of(moved), cold_start(m, n, seed=4), k=3, tol=1e-8, max_iter=n)
    # Its own generator: the random half drawn from torch's global one made the count depend
    # on which tests ran before (it failed after test_tracker.py).
    start = warm_start(before.vectors, (m, n), moved, torch.Generator().manual_seed(5))[0]
    warm = top_eigenpairs(matvec_of(moved), start, k=3, tol=1e-8, max_iter=n)
    exact = torch.linalg.eigvalsh(moved).flip(-1)[:, :3]
    torch.testing.assert_close(warm.values, exact, rtol=1e-10, atol=0)
    torch.testing.assert_close(cold.values, exact, rtol=1e-10, atol=0)
    assert bool((warm.matvecs < cold.matvecs).all()), (warm.matvecs, cold.matvecs)


def test_non_finite_member_is_nan_and_does_not_disturb_the_others():
    n = 20
    spectra = torch.linspace(1, 2, n, dtype=torch.float64).repeat(3, 1)
    a, _ = planted_operator(spectra)
    a[1, 0, 0] = float("nan")
    result = top_eigenpairs(matvec_of(a), cold_start(3, n), k=2, tol=1e-10, max_iter=n)
    assert bool(result.values[1].isnan().all()) and bool(result.vectors[1].isnan().all())
    for m in (0, 2):
        top = spectra[m].sort(descending=True).values[:2]
        torch.testing.assert_close(result.values[m], top, rtol=1e-10, atol=0)


def test_quadrature_moments_are_exact_per_probe_and_estimate_the_trace():
    n, order, probes = 40, 6, 60
    gen = torch.Generator().manual_seed(11)
    spectra = torch.randn(2, n, generator=gen, dtype=torch.float64)
    a, _ = planted_operator(spectra, seed=4)
    firsts: list[torch.Tensor] = []
    calls = 0

    def recording(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        if calls % order == 0:  # each probe's Lanczos run starts by applying A to the probe
            firsts.append(v.clone())
        calls += 1
        return matvec_of(a)(v)

    density = spectral_density(
        recording, (2, n), a, probes, order, torch.Generator().manual_seed(0)
    )
    assert density.nodes.shape == (2, probes, order)
    torch.testing.assert_close(
        density.weights.sum(dim=-1), torch.ones(2, probes, dtype=torch.float64)
    )
    probe = torch.stack(firsts, dim=1)  # (2, probes, n), unit vectors
    power = probe
    for p in range(2 * order):
        quadrature = (density.weights * density.nodes**p).sum(dim=-1)
        exact = (probe * power).sum(dim=-1)  # qᵀ A^p q
        torch.testing.assert_close(quadrature, exact, rtol=1e-8, atol=1e-10)
        power = torch.einsum("mij,mpj->mpi", a, power)
    # Averaged over probes, the second moment estimates tr(A²)/n (within sampling error).
    second = (density.weights * density.nodes**2).sum(dim=-1).mean(dim=1)
    torch.testing.assert_close(second, (spectra**2).mean(dim=1), rtol=0.1, atol=0)
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    mass = density.smoothed(grid, 0.1).sum(dim=-1) * (grid[1] - grid[0])
    torch.testing.assert_close(mass, torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=0)


def test_cold_start_minimum_krylov_dimension_prevents_misconvergence():
    """λ3 − λ4 = 5·tol·‖H‖ (as seen in a real Hessian): a random start that stops on the residual
    alone sometimes returns λ4 as the third eigenvalue; a minimum Krylov dimension does not."""
    m, n = 30, 300
    gen = torch.Generator().manual_seed(0)
    tops = torch.tensor([1.33, 1.22, 0.5856, 0.5789, 0.512], dtype=torch.float64).repeat(m, 1)
    bulk = torch.rand(m, n - 5, generator=gen, dtype=torch.float64) * 0.5 - 0.1
    a, _ = planted_operator(torch.cat([tops, bulk], dim=1), seed=1)
    hasty_misses = 0
    for seed in range(2, 6):
        start = cold_start(m, n, seed=seed)
        hasty = top_eigenpairs(matvec_of(a), start, k=3, tol=1e-3, max_iter=n)
        hasty_misses += int(((hasty.values[:, 2] - 0.5856).abs() > 1e-3).sum())
        careful = top_eigenpairs(
            matvec_of(a), start, k=3, tol=1e-3, max_iter=n, min_iter=cold_min_iter(3)
        )
        torch.testing.assert_close(careful.values, tops[:, :3], rtol=1e-5, atol=0)
    assert hasty_misses > 0, "the hazard this guards against did not show up"


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_warm_start_tracks_eigenvalues_that_cross(tol):
    """λ on u_new grows from 1 to 5 past the fixed top pair (3, 2.5); u_new is orthogonal to the
    old top-2, whose span stays exactly invariant. A warm start from it alone would stop at j = 2
    with residual 0 and miss the new top eigenvalue from the crossing onwards."""
    n, k = 60, 2
    gen = torch.Generator().manual_seed(0)
    bulk = torch.rand(1, n - 3, generator=gen, dtype=torch.float64)
    previous = None
    for growing in torch.linspace(1.0, 5.0, 20, dtype=torch.float64):  # never tied
        spectra = torch.cat([torch.tensor([[3.0, 2.5, float(growing)]]).double(), bulk], dim=1)
        a, _ = planted_operator(spectra, seed=7)
        start, _ = warm_start(previous, (1, n), a, gen)
        result = top_eigenpairs(matvec_of(a), start, k=k, tol=tol, max_iter=n)
        exact = torch.linalg.eigvalsh(a).flip(-1)[:, :k]
        torch.testing.assert_close(result.values, exact, rtol=10 * tol, atol=0)
        previous = result.vectors
