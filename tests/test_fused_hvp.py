"""The R-operator Hessian-vector products (fused torch ops and the C kernel) equal autograd's for
every built-in loss and MLP."""

from __future__ import annotations

import pytest
import torch

from dlf import kernels
from dlf.curvature import kernel_hvp
from dlf.curvature.fused_hvp import FusedHVP, supports
from dlf.curvature.helper import Curvature
from dlf.numerics.losses import BUILTIN_LOSSES
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective
from tests.curvature_fixtures import LOSSES, tiny_gamma, tiny_objective

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


needs_compiler = pytest.mark.skipif(
    kernels.command(torch.float64) is None, reason="no C compiler on this machine"
)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss", [loss.name for loss in BUILTIN_LOSSES])
def test_kernel_hvp_equals_autograd(loss, dtype):
    """All five losses, F and the static loss; widths and sample counts that fill no vector or
    block evenly (3, 17, 100 units; 33, 51, 120 samples)."""
    atol = 1e-12 if dtype == torch.float64 else 1e-4
    for width, points in ((3, 11), (17, 17), (100, 40)):
        objective = tiny_objective(loss, width=width, points=points, dtype=dtype)
        assert kernel_hvp.supports(objective, dtype)
        gen = torch.Generator().manual_seed(width)
        theta = torch.randn(MEMBERS, objective.model.n_params, generator=gen, dtype=torch.float64)
        v = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        theta, v, gamma = theta.to(dtype), v.to(dtype), tiny_gamma(MEMBERS, dtype)
        curvature = Curvature(objective).at(0, theta, gamma)
        for static in (False, True):
            expected = curvature.autograd_hvp(v, "static" if static else "dynamical")
            product = kernel_hvp.KernelHVP(objective, theta, gamma, static)(v)
            scale = float(expected.abs().max())
            torch.testing.assert_close(product, expected, rtol=0, atol=atol * scale)
            assert scale > 1e-3


@needs_compiler
def test_curvature_uses_the_kernel_only_where_it_applies():
    relu = tiny_objective("dce")
    assert kernel_hvp.supports(relu, torch.float64)
    assert not kernel_hvp.supports(relu, torch.float16)
    assert not kernel_hvp.supports(objective_for("dce", (5,), "tanh"), torch.float64)
    assert not kernel_hvp.supports(objective_for("dce", (4, 3), "relu"), torch.float64)
    theta = relu.model.init(range(2))
    curvature = Curvature(relu).at(0, theta, tiny_gamma(2))
    v = torch.randn_like(theta)
    torch.testing.assert_close(curvature.hvp(v), curvature.autograd_hvp(v), rtol=0, atol=1e-12)
    assert isinstance(curvature._products["dynamical"], kernel_hvp.KernelHVP)
