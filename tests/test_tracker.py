"""LambdaMaxTracker along a real gradient-descent trajectory, against dense eigvalsh."""

from __future__ import annotations

import torch

from dlf.curvature import Curvature
from dlf.tracker import LambdaMaxTracker
from tests.curvature_fixtures import tiny_gamma, tiny_objective


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
