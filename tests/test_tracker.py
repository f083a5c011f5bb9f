"""LambdaMaxTracker along a real gradient-descent trajectory and along planted spectra whose top
eigenvalues cross, against dense eigvalsh at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dlf
from dlf.curvature.helper import Curvature
from dlf.curvature.tracker import LambdaMaxTracker
from tests.curvature_fixtures import planted_operator, tiny_gamma, tiny_objective
from tests.test_ntk import run_config


def test_tracked_lambda_max_equals_dense_along_training_at_about_one_hvp_per_step():
    objective = tiny_objective("dce")
    members, steps, tol = 2, 40, 1e-3
    theta = objective.model.init(range(members))
    gamma = tiny_gamma(members)
    curvature = Curvature(objective)
    tracker = LambdaMaxTracker(tol, objective.model.n_params, "dynamical", period=25)
    matvecs = torch.zeros(members, dtype=torch.long)
    for step in range(steps):
        result = tracker(curvature.at(step, theta, gamma))
        dense = torch.linalg.eigvalsh(curvature.dense_hessian())
        lam, gap = dense[:, -1], dense[:, -1] - dense[:, -2]
        theta_, residual = result.values[:, 0], result.residuals[:, 0]
        # A full solve's guarantee: residual ≤ tol·|θ|, so |θ − λmax| ≤ residual²/gap.
        assert bool((residual <= tol * theta_.abs()).all()), (step, residual)
        assert bool(((theta_ - lam).abs() <= residual**2 / gap + 1e-14).all()), step
        torch.testing.assert_close(theta_, lam, rtol=1e-4, atol=0)
        matvecs += result.matvecs
        theta = theta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(theta, gamma).sum(), theta)
        theta = (theta - 0.05 * grad).detach()
    assert tracker.last_full == 25  # the periodic full solve ran
    # A warm full solve takes ≥ 7 products here, a cold one 20; tracking takes a few.
    assert float(matvecs.double().mean()) < 4 * steps, matvecs


@pytest.mark.parametrize("fallback", [False, True])
def test_the_helper_computes_products_of_some_members_alone(fallback):
    """What the tracker's Lanczos on its unconverged members uses, through the kernel and through
    autograd (the fallback for plugin models), against autograd on the whole ensemble."""
    objective = tiny_objective("dmse1")
    theta, gamma = objective.model.init(range(4)), tiny_gamma(4)
    curvature = Curvature(objective).at(0, theta, gamma)
    curvature.uses_fused_hvp = not fallback
    v = torch.randn_like(theta)
    rows = torch.tensor([3, 1])
    expected = curvature.autograd_hvp(v)[rows]
    torch.testing.assert_close(curvature.matvec(rows)(v[rows]), expected, rtol=0, atol=1e-12)


class PlantedCurvature(Curvature):
    """The curvature helper with planted symmetric matrices ``(M, n, n)`` in place of Hessians."""

    def __init__(self) -> None:
        super().__init__(tiny_objective())
        self.matrices = torch.empty(0)

    def point(self, step: int, matrices: torch.Tensor) -> PlantedCurvature:
        self.matrices = matrices
        m, n, _ = matrices.shape
        return self.at(step, torch.zeros(m, n, dtype=matrices.dtype), torch.ones(m, 3))

    def product(self, loss="dynamical"):
        matrices = self.matrices
        return lambda v: torch.einsum("mij,mj->mi", matrices, v)

    def matvec(self, rows, loss="dynamical"):
        matrices = self.matrices[rows]
        return lambda v: torch.einsum("mij,mj->mi", matrices, v)


def crossing(coupling: float, steps: int, n: int = 40) -> list[torch.Tensor]:
    """Two members' operators along a path: the fixed top eigenvalue 3 of u1 and a rising one
    (1 → 5) of u2 meet in a 2 × 2 block [[3, c], [c, b]] (c = 0: they cross exactly; c > 0: an
    avoided crossing, where the top eigenvector turns from u1 to u2); the bulk lies in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    _, q = planted_operator(torch.zeros(2, n, dtype=torch.float64), seed=3)
    bulk = torch.rand(2, n - 2, generator=gen, dtype=torch.float64)
    out = []
    for b in torch.linspace(1.0, 5.0, steps, dtype=torch.float64):
        block = torch.tensor([[3.0, coupling], [coupling, float(b)]], dtype=torch.float64)
        d = torch.zeros(2, n, n, dtype=torch.float64)
        d[:, :2, :2] = block
        d[:, 2:, 2:] = torch.diag_embed(bulk)
        out.append(q @ d @ q.transpose(1, 2))
    return out


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_tracker_follows_an_avoided_crossing_at_every_step(tol):
    """Near the avoided crossing the old top vector's residual grows, which sends the tracker on
    with Lanczos: it never reports the lower branch. Checked against dense eigvalsh each step."""
    curvature, steps = PlantedCurvature(), 60
    tracker = LambdaMaxTracker(tol, 40, "dynamical", period=1000)  # no periodic full solve
    products = 0
    for step, a in enumerate(crossing(0.2, steps)):
        result = tracker(curvature.point(step, a))
        dense = torch.linalg.eigvalsh(a)
        lam, gap = dense[:, -1], dense[:, -1] - dense[:, -2]
        value, residual = result.values[:, 0], result.residuals[:, 0]
        assert bool((residual <= tol * value.abs()).all()), (step, residual)
        assert bool(((value - lam).abs() <= residual**2 / gap + 1e-12).all()), (step, value, lam)
        products += int(result.matvecs.sum()) if step else 0
    assert tracker.last_full == 0
    assert products < 2 * 10 * (steps - 1)  # far from a full solve's ~20 per member and step


def test_an_exact_crossing_is_caught_by_the_next_full_solve():
    """An exact crossing leaves the old top vector an exact eigenvector (residual 0): no product
    of it can reveal the new top direction, so the tracker reports the old branch until its next
    periodic full solve, whose warm start carries a random half. track_period bounds the delay."""
    curvature, steps, period = PlantedCurvature(), 40, 7
    tracker = LambdaMaxTracker(1e-3, 40, "dynamical", period=period)
    wrong = []
    for step, a in enumerate(crossing(0.0, steps)):
        result = tracker(curvature.point(step, a))
        lam = torch.linalg.eigvalsh(a)[:, -1]
        if not torch.allclose(result.values[:, 0], lam, rtol=1e-5, atol=0):
            wrong.append(step)
        if step % period == 0:  # a full solve (here never at a near-tie of the two)
            torch.testing.assert_close(result.values[:, 0], lam, rtol=1e-5, atol=0)
    rising = [float(torch.linalg.eigvalsh(a)[0, -1]) for a in crossing(0.0, steps)]
    crossed = next(s for s, value in enumerate(rising) if value > 3 + 1e-9)
    # The hazard shows (some steps report 3), and only until the next full solve.
    assert wrong and all(crossed <= s < crossed + period for s in wrong), (crossed, wrong)


def test_lanczos_analyzer_tracks_lambda_max_every_step_and_agrees_with_full_solves(tmp_path):
    steps, tol = 30, 1e-8
    tracked = {"lanczos": {"every": 1, "k": 1, "tol": tol, "track_period": 10}}
    full = {"lanczos": {"every": 1, "k": 1, "tol": tol, "track": False}}
    a = dlf.execute(run_config(tmp_path, steps, tracked), trace_path=tmp_path / "a.nc")
    b = dlf.execute(run_config(tmp_path, steps, full), trace_path=tmp_path / "b.nc")
    ta, tb = dlf.open_trace(a.path), dlf.open_trace(b.path)
    np.testing.assert_allclose(
        ta.lanczos_eigenvalues.values, tb.lanczos_eigenvalues.values, rtol=1e-9
    )
    # Between full solves (steps 0, 10, 20) the tracker spends fewer products than a full solve.
    between = [s for s in range(1, steps) if s % 10]
    fewer = ta.lanczos_matvecs.values[:, between] < tb.lanczos_matvecs.values[:, between]
    assert fewer.mean() > 0.5, ta.lanczos_matvecs.values
