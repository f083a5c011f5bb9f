"""The curvature helper on tiny MLPs: Lanczos eigenpairs against torch.func.hessian + eigvalsh."""

from __future__ import annotations

import pytest
import torch

from dlf.curvature.helper import Curvature
from dlf.testing import dense_hessian
from tests.curvature_fixtures import tiny_gamma, tiny_objective

MEMBERS = 3


def curvature_at_init(dtype: torch.dtype = torch.float64, loss: str = "dce") -> Curvature:
    objective = tiny_objective(loss, dtype=dtype)
    theta = objective.model.init(range(MEMBERS), dtype=dtype)
    return Curvature(objective).at(0, theta, tiny_gamma(MEMBERS, dtype))


def top_exact(hessian: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(hessian).flip(-1)[:, :k]


def test_top3_equal_dense_hessian_eigvalsh_float64():
    curvature = curvature_at_init()
    exact = top_exact(dense_hessian(curvature.objective, curvature.theta, curvature.gamma), 3)
    values, vectors = curvature.eigenpairs(3, tol=1e-9)
    torch.testing.assert_close(values, exact, rtol=1e-8, atol=0)
    assert vectors.shape == (MEMBERS, 3, curvature.objective.model.n_params)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(MEMBERS, 3, dtype=torch.float64))


def test_top3_float32_within_1e_4_of_float64_dense():
    curvature = curvature_at_init(torch.float32)
    objective64 = tiny_objective()
    hessian = dense_hessian(objective64, curvature.theta.double(), curvature.gamma.double())
    values, _ = curvature.eigenpairs(3, tol=1e-5)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values.double(), top_exact(hessian, 3), rtol=1e-4, atol=0)


def test_whole_spectrum_with_negative_eigenvalues():
    curvature = curvature_at_init()
    hessian = dense_hessian(curvature.objective, curvature.theta, curvature.gamma)
    n = hessian.shape[-1]
    exact = top_exact(hessian, n)
    assert bool((exact[:, -1] < -1e-3).all()), "a ReLU net at init has negative curvature"
    result = curvature.spectrum(n, tol=1e-10, max_iter=n)
    scale = exact.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(result.values / scale, exact / scale, rtol=0, atol=1e-8)


def test_eigenvectors_satisfy_the_dense_eigen_equation():
    curvature = curvature_at_init()
    hessian = dense_hessian(curvature.objective, curvature.theta, curvature.gamma)
    result = curvature.spectrum(3, tol=1e-6)
    hv = torch.einsum("mij,mkj->mki", hessian, result.vectors)
    true = (hv - result.values[..., None] * result.vectors).norm(dim=-1)
    torch.testing.assert_close(result.residuals, true, rtol=1e-3, atol=1e-12)
    assert bool((true <= 1e-6 * result.values[:, :1].abs() * 1.01).all())


def test_static_loss_and_exact_mode():
    curvature = curvature_at_init()
    static = top_exact(dense_hessian(curvature.objective, curvature.theta, None), 3)
    dynamical = top_exact(dense_hessian(curvature.objective, curvature.theta, curvature.gamma), 3)
    assert not torch.allclose(static, dynamical, rtol=1e-3)
    values, _ = curvature.eigenpairs(3, tol=1e-10, loss="static")
    torch.testing.assert_close(values, static, rtol=1e-8, atol=0)
    exact = curvature.spectrum(3, mode="exact")
    torch.testing.assert_close(exact.values, dynamical, rtol=1e-10, atol=0)
    assert bool((exact.matvecs == 0).all()) and bool((exact.residuals < 1e-10).all())


def test_one_solve_per_step_and_warm_start_across_steps(monkeypatch):
    curvature = curvature_at_init()
    calls = 0
    hvp = curvature.hvp

    def counting(v: torch.Tensor, loss: str = "dynamical") -> torch.Tensor:
        nonlocal calls
        calls += 1
        return hvp(v, loss)  # type: ignore[arg-type]

    monkeypatch.setattr(curvature, "hvp", counting)
    first = curvature.spectrum(3, tol=1e-8)
    used = calls
    values, _ = curvature.eigenpairs(2, tol=1e-6)  # looser, fewer: served from the cache
    assert calls == used
    torch.testing.assert_close(values, first.values[:, :2])
    curvature.eigenpairs(3, tol=1e-10)  # tighter: solved again
    assert calls > used
    # Next step, a small move: the warm start from this step's vectors is no worse than a cold
    # start (its random half, which guards against crossing eigenvalues, costs most of the gain).
    gen = torch.Generator().manual_seed(0)
    move = torch.randn(curvature.theta.shape, generator=gen, dtype=curvature.theta.dtype)
    theta = curvature.theta + 1e-4 * move
    warm = curvature.at(1, theta, curvature.gamma).spectrum(3, tol=1e-8)
    cold = Curvature(curvature.objective).at(1, theta, curvature.gamma).spectrum(3, tol=1e-8)
    torch.testing.assert_close(warm.values, cold.values, rtol=1e-10, atol=0)
    assert bool((warm.matvecs <= cold.matvecs).all()), (warm.matvecs, cold.matvecs)


def test_diverged_member_gives_nan_only_in_its_row():
    curvature = curvature_at_init()
    theta = curvature.theta.clone()
    theta[1, 0] = float("inf")
    curvature.at(5, theta, curvature.gamma)
    values, vectors = curvature.eigenpairs(2, tol=1e-8)
    assert bool(values[1].isnan().all()) and bool(vectors[1].isnan().all())
    exact = top_exact(dense_hessian(curvature.objective, theta[[0, 2]], curvature.gamma[[0, 2]]), 2)
    torch.testing.assert_close(values[[0, 2]], exact, rtol=1e-8, atol=0)
    exact_mode = curvature.spectrum(2, mode="exact")
    assert bool(exact_mode.values[1].isnan().all())


def test_spectral_density_matches_the_dense_spectrum_moments():
    curvature = curvature_at_init()
    hessian = dense_hessian(curvature.objective, curvature.theta, curvature.gamma)
    n = hessian.shape[-1]
    density = curvature.density(probes=1, order=n)  # a full Krylov space: nodes = eigenvalues
    nodes = density.nodes[:, 0].sort(dim=-1).values
    torch.testing.assert_close(nodes, torch.linalg.eigvalsh(hessian), rtol=0, atol=1e-8)
    assert curvature.density(probes=1, order=n) is density


@pytest.mark.parametrize("loss", ["dmse1", "dmse2"])
def test_other_dynamical_losses(loss):
    curvature = curvature_at_init(loss=loss)
    exact = top_exact(dense_hessian(curvature.objective, curvature.theta, curvature.gamma), 3)
    values, _ = curvature.eigenpairs(3, tol=1e-9)
    torch.testing.assert_close(values, exact, rtol=1e-8, atol=0)
