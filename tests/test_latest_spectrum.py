"""Curvature.latest_spectrum: what the last solve found, readable without replaying its options."""

from __future__ import annotations

import torch

from dlf.curvature.helper import Curvature
from tests.curvature_fixtures import tiny_gamma, tiny_objective


def test_latest_spectrum_is_the_last_solve_of_its_loss_at_any_step():
    objective = tiny_objective("dce")
    theta = objective.model.init(range(2))
    gamma = tiny_gamma(2)
    curvature = Curvature(objective)
    assert curvature.at(0, theta, gamma).latest_spectrum() is None
    solved = curvature.spectrum(2, tol=1e-6, max_iter=objective.model.n_params)
    curvature.at(1, theta + 1e-3, gamma)  # moved on, nothing solved yet: still step 0's
    latest = curvature.latest_spectrum()
    assert latest is not None and (latest.step, latest.tol) == (0, 1e-6)
    torch.testing.assert_close(latest.result.values, solved.values)
    torch.testing.assert_close(latest.result.vectors, solved.vectors)
    assert curvature.latest_spectrum("static") is None
    exact = curvature.spectrum(1, mode="exact")
    latest = curvature.latest_spectrum()
    assert latest is not None and (latest.step, latest.tol) == (1, 0.0)
    torch.testing.assert_close(latest.result.values, exact.values)
