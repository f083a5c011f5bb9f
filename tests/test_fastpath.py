"""The hand-written forward/backward pass against autograd, and its use by the trainer."""

import numpy as np
import pytest
import torch

from dlf import kernels
from dlf.engine.gradients import (
    AutogradGradient,
    FusedGradient,
    KernelGradient,
    fused,
    gradient_for,
    kernel_function,
)
from dlf.numerics.data import SpiralOptions, spiral
from dlf.numerics.losses import BUILTIN_LOSSES, Loss
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

LOSSES = {loss.name: loss for loss in BUILTIN_LOSSES}


def objective(loss: str, activation: str = "relu", depth: int = 1) -> Objective:
    data = spiral(SpiralOptions(points_per_class=7))
    model = MLP(2, (6,) * depth, 3, activation)
    chosen = LOSSES[loss]
    x = torch.tensor(data.x_train, dtype=torch.float64)
    return Objective(model, chosen, LOSSES[chosen.static_name], x, torch.tensor(data.y_train))


def point(obj: Objective, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random θ (not the init: biases non-zero, some ReLUs dead) and random Γ > 0."""
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(rows, obj.model.n_params, generator=gen, dtype=torch.float64)
    gamma = 0.2 + 3 * torch.rand(rows, obj.n_classes, generator=gen, dtype=torch.float64)
    return theta, gamma


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fused_gradient_equals_autograd(loss, activation, depth):
    obj = objective(loss, activation, depth)
    theta, gamma = point(obj)
    if not obj.loss.dynamical:
        gamma = torch.ones_like(gamma)  # as the trainer passes to a static loss
    active = torch.tensor([True, False, True, True])
    fused, reference = FusedGradient(obj), AutogradGradient(obj)
    f_loss, f_grad = fused(theta, gamma, active, obj.x, obj.y)
    r_loss, r_grad = reference(theta, gamma, active, obj.x, obj.y)
    assert float(r_grad.abs().max()) > 1e-3  # a real gradient, not zeros on both sides
    torch.testing.assert_close(f_loss, r_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_grad, r_grad, rtol=1e-12, atol=1e-12)
    assert float(f_grad[1].abs().max()) == 0  # the inactive row gets no gradient
    for f_metric, r_metric in zip(fused.metrics(), reference.metrics(), strict=True):
        torch.testing.assert_close(f_metric, r_metric, rtol=1e-12, atol=1e-12)


def test_static_metrics_equal_the_static_loss():
    """Static loss and accuracy at the evaluated point, recomputed from the logits by hand."""
    obj = objective("dce")
    theta, gamma = point(obj)
    fused = FusedGradient(obj)
    fused(theta, gamma, torch.ones(4, dtype=torch.bool), obj.x, obj.y)
    static, acc = fused.metrics()
    logits = obj.logits(theta)
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, obj.y.expand(4, -1)[..., None])[..., 0]
    torch.testing.assert_close(static, nll.mean(-1), rtol=1e-12, atol=1e-12)
    expected = torch.tensor([(row.argmax(-1) == obj.y).double().mean() for row in logits])
    torch.testing.assert_close(acc, expected.to(acc.dtype))


@pytest.mark.parametrize("loss", ["dce", "dmse1", "dmse2"])
def test_fused_gradient_on_per_member_minibatches(loss):
    obj = objective(loss, depth=2)
    theta, gamma = point(obj)
    idx = torch.stack(
        [torch.randperm(len(obj.y), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    )
    x, y = obj.x[idx[:, :5]], obj.y[idx[:, :5]]
    active = torch.ones(4, dtype=torch.bool)
    f_loss, f_grad = FusedGradient(obj)(theta, gamma, active, x, y)
    r_loss, r_grad = AutogradGradient(obj)(theta, gamma, active, x, y)
    torch.testing.assert_close(f_loss, r_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_grad, r_grad, rtol=1e-12, atol=1e-12)


def kernel(obj: Objective) -> KernelGradient:
    function = kernel_function(obj.x.dtype)
    if function is None:
        pytest.skip("no C compiler or glibc libmvec here: training falls back to the fused pass")
    return KernelGradient(obj, function)


def assert_same_step(a, b, obj, theta, gamma, active, x=None, y=None):
    """Same F, gradient, metrics at (θ, Γ), and same evaluation on other data, to 1e-12."""
    x, y = (obj.x, obj.y) if x is None else (x, y)
    got, expected = a(theta, gamma, active, x, y), b(theta, gamma, active, x, y)
    assert float(expected[1].abs().max()) > 1e-3  # a real gradient
    for tensor, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)
    for tensor, reference in zip(a.metrics(), b.metrics(), strict=True):
        torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)
    other = torch.flip(obj.x, dims=[0]) * 1.5, torch.flip(obj.y, dims=[0])
    for tensor, reference in zip(a.evaluate(theta, *other), b.evaluate(theta, *other), strict=True):
        torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_kernel_equals_autograd(loss):
    obj = objective(loss)
    theta, gamma = point(obj)
    if not obj.loss.dynamical:
        gamma = torch.ones_like(gamma)
    active = torch.tensor([True, True, False, True])
    compiled = kernel(obj)
    assert_same_step(compiled, AutogradGradient(obj), obj, theta, gamma, active)
    _, grad = compiled(theta, gamma, active, obj.x, obj.y)
    assert float(grad[2].abs().max()) == 0  # the inactive row gets no gradient


@pytest.mark.parametrize("name", ["dce", "dmse2"])
def test_other_shapes(name):
    """Not the spiral's 2 inputs and 3 classes: the kernel's generic path, and the fused pass
    back-propagating (too many inputs × classes for its one-product backward), odd sizes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (23,), generator=gen)
    model = MLP(5, (19,), 4)
    obj = Objective(model, LOSSES[name], LOSSES[LOSSES[name].static_name], x, y)
    theta = torch.randn(3, model.n_params, generator=gen, dtype=torch.float64)
    gamma = 0.5 + torch.rand(3, 4, generator=gen, dtype=torch.float64)
    active = torch.ones(3, dtype=torch.bool)
    fused = FusedGradient(obj)
    assert not fused.shallow
    assert_same_step(fused, AutogradGradient(obj), obj, theta, gamma, active)
    assert_same_step(kernel(obj), AutogradGradient(obj), obj, theta, gamma, active)


def test_kernel_threads_do_not_change_a_bit():
    obj = objective("dce")
    theta, gamma = point(obj, rows=7)
    active = torch.ones(7, dtype=torch.bool)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel(obj)(theta, gamma, active, obj.x, obj.y)
        torch.set_num_threads(3)
        three = kernel(obj)(theta, gamma, active, obj.x, obj.y)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [FusedGradient, kernel], ids=["fused", "kernel"])
def test_float32_is_close_to_float64_autograd(make):
    obj64 = objective("dce")
    obj = Objective(obj64.model, obj64.loss, obj64.static, obj64.x.float(), obj64.y)
    theta, gamma = point(obj64)
    active = torch.ones(4, dtype=torch.bool)
    loss32, grad32 = make(obj)(theta.float(), gamma.float(), active, obj.x, obj.y)
    loss64, grad64 = AutogradGradient(obj64)(theta, gamma, active, obj64.x, obj64.y)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)


def test_kernel_hands_minibatches_to_the_fused_pass():
    obj = objective("dce")
    theta, gamma = point(obj)
    idx = torch.stack([torch.arange(i, i + 5) for i in range(4)])
    x, y = obj.x[idx], obj.y[idx]
    active = torch.ones(4, dtype=torch.bool)
    assert_same_step(kernel(obj), AutogradGradient(obj), obj, theta, gamma, active, x, y)


def test_gradient_for_picks_the_fastest_that_applies():
    relu = objective("dce")
    expected = KernelGradient if kernel_function(torch.float64) else FusedGradient
    assert isinstance(gradient_for(relu), expected)
    assert isinstance(gradient_for(objective("dce", "tanh")), FusedGradient)
    assert isinstance(gradient_for(objective("dce", depth=2)), FusedGradient)
    cubic = Loss("cubic", lambda f, y, g: (f**3).mean((1, 2)), dynamical=False, static_name="ce")
    custom = Objective(relu.model, cubic, relu.static, relu.x, relu.y)
    assert isinstance(gradient_for(custom), AutogradGradient)


@pytest.mark.parametrize("depth", [1, 2])
def test_rows_in_several_passes_equal_one_pass(monkeypatch, depth):
    """The CPU splits the rows into cache-sized passes; the split must not change anything."""
    obj = objective("dmse1", depth=depth)
    theta, gamma = point(obj, rows=5)
    active = torch.tensor([True, True, False, True, True])
    whole = FusedGradient(obj)
    expected = (*whole(theta, gamma, active, obj.x, obj.y), *whole.metrics())
    row_bytes = len(obj.y) * 6 * 8
    monkeypatch.setattr(fused, "CACHE_BYTES", 2 * row_bytes)
    split = FusedGradient(obj)
    assert split.chunk_rows(theta, len(obj.y)) == 2
    got = (*split(theta, gamma, active, obj.x, obj.y), *split.metrics())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_trace_records_the_gradient_path_and_a_missing_compiler_is_told(
    tmp_path, monkeypatch, make_config
):
    """With no C compiler the run falls back to the fused pass, warns once and says why."""
    import dlf
    from dlf.engine.gradients import FastPathWarning

    config = make_config(train={"steps": 5})
    normal = dlf.execute(config, trace_path=tmp_path / "a.nc").open()
    expected = "kernel" if kernel_function(torch.float64) else "fused"
    assert normal.attrs["gradient_path"] == expected

    monkeypatch.setenv("CC", "no-such-compiler-dlf")
    kernels.load.cache_clear()
    try:
        with pytest.warns(FastPathWarning, match="no C compiler 'no-such-compiler-dlf'"):
            fallback = dlf.execute(config, trace_path=tmp_path / "b.nc").open()
    finally:
        monkeypatch.undo()
        kernels.load.cache_clear()
    assert fallback.attrs["gradient_path"] == "fused"
    assert "no C compiler" in fallback.attrs["gradient_path_reason"]
    np.testing.assert_allclose(fallback.loss.values, normal.loss.values, rtol=1e-10)

    tanh = make_config(train={"steps": 5}, model={"activation": "tanh"})
    assert dlf.execute(tanh, trace_path=tmp_path / "c.nc").open().attrs["gradient_path"] == "fused"
