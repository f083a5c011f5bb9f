"""The NumPy k = 1 Lanczos (dlf.curvature.top_pair) against dense Hessians, against the torch
loop it replaces on a CPU, and the tracker's same-wall start in a period-2 bounce."""

from __future__ import annotations

import pytest
import torch

from dlf.curvature.helper import Curvature
from dlf.curvature.kernel_hvp import KernelHVP, top_pair_function
from dlf.curvature.lanczos import random_vectors, top_eigenpairs, warm_start
from dlf.curvature.top_pair import solve, top_eigenpair
from dlf.curvature.tracker import LambdaMaxTracker
from dlf.testing import dense_hessian
from tests.curvature_fixtures import planted_operator, tiny_gamma, tiny_objective
from tests.test_tracker import PlantedCurvature


def matvec_of(matrices: torch.Tensor):
    return lambda v: torch.einsum("mij,mj->mi", matrices, v)


@pytest.mark.parametrize("path", ["kernel", "numpy"])
@pytest.mark.parametrize("loss", ["dce", "dmse2"])
def test_lambda_max_of_a_tiny_net_against_torch_func_hessian_and_inside_its_bound(loss, path):
    """Members at their init and after some descent; λmax ∈ [θ, θ + residual] (θ is a Rayleigh
    quotient, the residual bounds the distance to an eigenvalue), and θ is that eigenvalue to
    about residual² / gap. Through the C kernel's loop and through the NumPy one."""
    if path == "kernel" and top_pair_function(torch.float64) is None:
        pytest.skip("no C compiler: the kernel's loop is not built")
    objective, members, tol = tiny_objective(loss), 3, 1e-3
    theta, gamma = objective.model.init(range(members)), tiny_gamma(members)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        curvature = Curvature(objective).at(step, theta, gamma)
        dense = torch.linalg.eigvalsh(dense_hessian(objective, theta, gamma))
        start = random_vectors(theta.shape, theta, generator)
        matvec = curvature.product() if path == "kernel" else curvature.hvp
        assert isinstance(matvec, KernelHVP) == (path == "kernel")
        result = top_eigenpair(matvec, start, tol, 200, generator, min_iter=20)
        value, bound = result.values[:, 0], result.residuals[:, 0]
        lam, gap = dense[:, -1], dense[:, -1] - dense[:, -2]
        assert bool((lam >= value - 1e-12).all() and (lam <= value + bound + 1e-12).all())
        assert bool((bound <= tol * value.abs()).all()), bound
        assert bool(((lam - value).abs() <= bound**2 / gap + 1e-12).all()), (lam, value)
        true = (curvature.hvp(result.vectors[:, 0]) - value[:, None] * result.vectors[:, 0]).norm(
            dim=-1
        )
        torch.testing.assert_close(bound, true, rtol=1e-3, atol=1e-12)
        theta = theta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(theta, gamma).sum(), theta)
        theta = (theta - 0.5 * grad).detach()


@pytest.mark.parametrize("warm", [False, True])
def test_same_values_and_products_as_the_torch_loop(warm):
    """One algorithm, two implementations: the k = 1 result of top_eigenpairs, from the same
    start (cold with min_iter, or warm: the helper's full-solve start), to rounding."""
    n, m = 80, 4
    gen = torch.Generator().manual_seed(1)
    spectra = torch.rand(m, n, generator=gen, dtype=torch.float64) * 2 - 1
    spectra[:, 0] += torch.tensor([2.0, 0.01, 1.0, 3.0], dtype=torch.float64)  # gaps differ
    a, q = planted_operator(spectra, seed=4)
    start = random_vectors((m, n), a, gen)
    if warm:
        start = warm_start(q[:, :, :1].transpose(1, 2), (m, n), a, gen)[0]
    kwargs = {"tol": 1e-6, "max_iter": n, "min_iter": 1 if warm else 20}
    ours = top_eigenpair(matvec_of(a), start, **kwargs)
    theirs = top_eigenpairs(matvec_of(a), start, 1, **kwargs)
    torch.testing.assert_close(ours.values, theirs.values, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.residuals, theirs.residuals, rtol=1e-6, atol=1e-14)
    assert torch.equal(ours.matvecs, theirs.matvecs)
    overlap = (ours.vectors[:, 0] * theirs.vectors[:, 0]).sum(dim=-1).abs()
    torch.testing.assert_close(overlap, torch.ones(m, dtype=torch.float64))


def test_first_product_breakdown_non_finite_and_float32():
    n = 30
    spectra = torch.linspace(0, 3, n, dtype=torch.float64).flip(0).repeat(3, 1)
    a, q = planted_operator(spectra, seed=2)
    a[2, 0, 0] = float("nan")
    # Member 0 starts on the top eigenvector: one product, breakdown, exact; member 1 from a
    # random vector; member 2's products are NaN: its result is NaN, the others go on.
    start = torch.stack([q[0, :, 0], random_vectors((n,), a), random_vectors((n,), a)])
    first = matvec_of(a)(start / start.norm(dim=-1, keepdim=True))
    result = top_eigenpair(matvec_of(a), start, 1e-10, n, first=first)
    assert int(result.matvecs[0]) == 1 and float(result.residuals[0, 0]) < 1e-12
    torch.testing.assert_close(result.values[:2, 0], spectra[:2, 0], rtol=1e-10, atol=0)
    assert bool(result.values[2].isnan().all()) and bool(result.vectors[2].isnan().all())
    single = top_eigenpair(matvec_of(a[:2].float()), start[:2].float(), 1e-4, n)
    assert single.values.dtype == torch.float32
    torch.testing.assert_close(single.values[:, 0], spectra[:2, 0].float(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_kernels_loop_equals_the_numpy_loop(dtype):
    """The C loop (products and bookkeeping in one call) and the NumPy loop around the same C
    products: same values, residuals, products and first product; per-member min_iter, a
    given first product, and a member whose θ is NaN (NaN result, the others unharmed)."""
    if top_pair_function(dtype) is None:
        pytest.skip("no C compiler: the kernel's loop is not built")
    objective, members = tiny_objective("dce", dtype=dtype), 4
    theta = objective.model.init(range(members)).to(dtype)
    theta[3, -1] = float("nan")  # an output bias: every logit NaN
    kernel = Curvature(objective).at(0, theta, tiny_gamma(members, dtype)).product()
    assert isinstance(kernel, KernelHVP)
    start = random_vectors(theta.shape, theta, torch.Generator().manual_seed(2))
    least = torch.tensor([20, 1, 5, 1])
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    ours, first = solve(kernel, start, tol, 60, min_iter=least)
    numpy_result, numpy_first = solve(lambda v: kernel(v), start, tol, 60, min_iter=least)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours.values[:3], numpy_result.values[:3], rtol=rtol, atol=0)
    torch.testing.assert_close(
        ours.residuals[:3], numpy_result.residuals[:3], rtol=1e-2, atol=1e-12
    )
    assert torch.equal(ours.matvecs, numpy_result.matvecs), (ours.matvecs, numpy_result.matvecs)
    torch.testing.assert_close(first[:3], numpy_first[:3], rtol=rtol, atol=1e-12)
    assert bool(ours.values[3].isnan().all()) and int(ours.matvecs[3]) == 1
    again, _ = solve(kernel, start, tol, 60, min_iter=least, first=first)
    torch.testing.assert_close(again.values[:3], ours.values[:3], rtol=0, atol=0)
    assert torch.equal(again.matvecs, ours.matvecs)


def bounce(steps: int, n: int = 40) -> list[torch.Tensor]:
    """One member's Hessians in a period-2 bounce: two walls alternate, each drifting slowly;
    their top eigenvalues (≈ 3, ≈ 3.5) and eigenvectors differ (the second's basis is turned)."""
    gen = torch.Generator().manual_seed(0)
    _, q = planted_operator(torch.zeros(1, n, dtype=torch.float64), seed=5)
    bulk = torch.rand(n - 1, generator=gen, dtype=torch.float64) * 2
    skew = torch.randn(n, n, generator=gen, dtype=torch.float64)
    turn = torch.linalg.matrix_exp(0.05 * (skew - skew.T))  # a rotation of every direction
    out = []
    for t in range(steps):
        top = (3.5 if t % 2 else 3.0) + 1e-4 * t
        d = torch.diag(torch.cat([torch.tensor([top], dtype=torch.float64), bulk]))
        basis = q[0] @ turn if t % 2 else q[0]
        out.append((basis @ d @ basis.T)[None])
    return out


def test_tracker_starts_a_bounce_from_the_same_wall_and_stays_exact():
    curvature, steps = PlantedCurvature(), 40
    tracker = LambdaMaxTracker(1e-8, 40, "dynamical", period=1000)
    products = []
    for step, a in enumerate(bounce(steps)):
        result = tracker(curvature.point(step, a))
        lam = torch.linalg.eigvalsh(a)[:, -1]
        torch.testing.assert_close(result.values[:, 0], lam, rtol=1e-12, atol=0)
        products.append(int(result.matvecs[0]))
    # From step 3 on (samples at the three steps before, whose λ turned) each wall starts from
    # its own vector of two steps before: a product or two; from the other wall's (steps 1, 2)
    # it takes several.
    assert max(products[3:]) <= 2, products
    assert min(products[1:3]) > 4, products
