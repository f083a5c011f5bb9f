"""The R-operator Hessian-vector product equals autograd's for every built-in loss and MLP."""

from __future__ import annotations

import pytest
import torch

from dlf.curvature.fused_hvp import FusedHVP, supports
from dlf.curvature.helper import Curvature
from dlf.numerics.losses import BUILTIN_LOSSES
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective
from tests.curvature_fixtures import LOSSES, tiny_gamma

MEMBERS = 3


def objective_for(loss: str, hidden: tuple[int, ...], activation: str) -> Objective:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    model = MLP(2, hidden, 3, activation)
    return Objective(model, LOSSES[loss], LOSSES[LOSSES[loss].static_name], x, y)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("hidden", [(5,), (4, 3)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", [loss.name for loss in BUILTIN_LOSSES])
def test_fused_hvp_equals_autograd(loss, activation, hidden, static):
    objective = objective_for(loss, hidden, activation)
    assert supports(objective)
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(MEMBERS, objective.model.n_params, generator=gen, dtype=torch.float64)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    gamma = tiny_gamma(MEMBERS)
    curvature = Curvature(objective).at(0, theta, gamma)
    kind = "static" if static else "dynamical"
    expected = curvature.autograd_hvp(v, kind)
    fused = FusedHVP(objective, theta, gamma, static)(v)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    assert float(expected.abs().max()) > 1e-3  # a non-trivial product


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_curvature_eigenvalues_through_fused_path_equal_dense(activation):
    objective = objective_for("dce", (4,), activation)
    gen = torch.Generator().manual_seed(2)
    theta = torch.randn(2, objective.model.n_params, generator=gen, dtype=torch.float64)
    curvature = Curvature(objective).at(0, theta, tiny_gamma(2))
    assert curvature.uses_fused_hvp
    result = curvature.spectrum(3, tol=1e-10, max_iter=objective.model.n_params)
    dense = torch.linalg.eigvalsh(curvature.dense_hessian()).flip(-1)[:, :3]
    torch.testing.assert_close(result.values, dense, rtol=1e-9, atol=1e-12)
