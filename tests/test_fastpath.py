"""The hand-written forward/backward pass against autograd, and its use by the trainer."""

import pytest
import torch

from dlf import fastpath
from dlf.data import SpiralOptions, spiral
from dlf.fastpath import AutogradGradient, FusedGradient, gradient_for
from dlf.losses import BUILTIN_LOSSES, Loss
from dlf.models import MLP
from dlf.objective import Objective

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


def test_fused_gradient_in_float32_is_close():
    obj64 = objective("dce")
    obj = Objective(obj64.model, obj64.loss, obj64.static, obj64.x.float(), obj64.y)
    theta, gamma = point(obj64)
    active = torch.ones(4, dtype=torch.bool)
    _, grad32 = FusedGradient(obj)(theta.float(), gamma.float(), active, obj.x, obj.y)
    _, grad64 = AutogradGradient(obj64)(theta, gamma, active, obj64.x, obj64.y)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-5, atol=1e-6)


def test_unknown_loss_falls_back_to_autograd():
    obj = objective("dce")
    cubic = Loss("cubic", lambda f, y, g: (f**3).mean((1, 2)), dynamical=False, static_name="ce")
    custom = Objective(obj.model, cubic, obj.static, obj.x, obj.y)
    assert isinstance(gradient_for(obj), FusedGradient)
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
    monkeypatch.setattr(fastpath, "CACHE_BYTES", 2 * row_bytes)
    split = FusedGradient(obj)
    assert split.chunk_rows(theta, len(obj.y)) == 2
    got = (*split(theta, gamma, active, obj.x, obj.y), *split.metrics())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
