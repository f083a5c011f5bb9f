"""LambdaMaxTracker along a real gradient-descent trajectory, against dense eigvalsh."""

from __future__ import annotations

import numpy as np
import torch

import dlf
from dlf.curvature.helper import Curvature
from dlf.curvature.tracker import LambdaMaxTracker
from tests.curvature_fixtures import tiny_gamma, tiny_objective
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
