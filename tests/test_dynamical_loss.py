"""``dlf.DynamicalLoss`` in a plain PyTorch loop: Γ against the 2021 formula by hand, the loss
against the papers' formulas written with torch.nn.functional, and the same Γ as the trainer's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlf
from dlf.config import RunConfig
from dlf.errors import ConfigError
from tests.conftest import tiny_config


def test_gamma_is_the_2021_triangle_normalised_to_sum_to_c_and_static_at_the_end():
    loss = dlf.DynamicalLoss("ce", n_classes=3, amplitude=10, period=100, total_steps=1000)
    # t = 25: class 0 emphasised, raw 1 + 2·9/100·25 = 5.5 → 3·5.5/7.5, and 3·1/7.5 for the rest
    np.testing.assert_allclose(loss.gamma(25), [2.2, 0.4, 0.4], rtol=1e-12)
    # t = 150: class 1 at the peak A = 10 → 30/12 and 3/12
    np.testing.assert_allclose(loss.gamma(150), [0.25, 2.5, 0.25], rtol=1e-12)
    np.testing.assert_allclose(loss.gamma(200), [1.0, 1.0, 1.0])  # a period starts at Γ = 1
    np.testing.assert_allclose(loss.gamma(899), loss.gamma(899 - 300))  # 3 classes × T
    np.testing.assert_allclose(loss.gamma(925), [1.0, 1.0, 1.0])  # the last period is static
    forever = dlf.DynamicalLoss("ce", n_classes=3, amplitude=10, period=100)
    np.testing.assert_allclose(forever.gamma(925), [2.2, 0.4, 0.4], rtol=1e-12)


def test_sine_schedule_and_static_from_by_hand():
    """Another registered schedule, by name: t = 110 is 10 steps into class 1's period, raw
    weight 1 + 9·sin²(π/10); static_from switches Γ to 1 at that step exactly."""
    loss = dlf.DynamicalLoss("dmse2", n_classes=3, amplitude=10, period=100, schedule="sine")
    raw = 1 + 9 * math.sin(math.pi / 10) ** 2
    np.testing.assert_allclose(loss.gamma(110), np.array([1, raw, 1]) * 3 / (raw + 2), rtol=1e-12)
    switched = dlf.DynamicalLoss("ce", 3, amplitude=10, period=100, static_from=120)
    assert float(switched.gamma(119)[1]) > 1
    np.testing.assert_allclose(switched.gamma(120), [1.0, 1.0, 1.0])


def test_losses_match_the_papers_formulas_written_out():
    torch.manual_seed(0)
    logits = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    step = 30
    for name in ("ce", "dce", "mse", "dmse1", "dmse2"):
        fn = dlf.DynamicalLoss(name, n_classes=4, amplitude=6, period=80)
        g = fn.gamma(step)
        onehot = F.one_hot(y, 4).to(torch.float64)
        if name in ("ce", "dce"):
            expected = (g[y] * F.cross_entropy(logits, y, reduction="none")).mean()
        elif name in ("mse", "dmse1"):
            expected = (g[y] * ((logits - onehot) ** 2).sum(1)).mean()
        else:
            expected = ((logits - onehot * g) ** 2).sum(1).mean()
        assert float(fn(logits, y, step)) == pytest.approx(float(expected), rel=1e-12)
        members = fn(torch.stack([logits, 2 * logits]), y, step)
        assert members.shape == (2,) and float(members[0]) == pytest.approx(float(expected))


@pytest.mark.parametrize("period", [12, 12.5])  # 12.5: static from step 47.5, so 47 is not
def test_gamma_is_what_the_trainer_uses(tmp_path, period):
    raw = tiny_config(tmp_path, schedule={"amplitude": 7, "period": period}, train={"steps": 60})
    trace = dlf.execute(RunConfig.model_validate(raw)).open()
    loss = dlf.DynamicalLoss("dce", n_classes=3, amplitude=7, period=period, total_steps=60)
    for step in range(60):
        recorded = trace["gamma"].sel(step=step).isel(member=0).values
        np.testing.assert_allclose(recorded, loss.gamma(step).numpy(), rtol=1e-6)


def test_a_plain_pytorch_loop_trains_with_it():
    torch.manual_seed(0)
    x = torch.randn(60, 2)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    loss_fn = dlf.DynamicalLoss("ce", n_classes=3, amplitude=5, period=20, total_steps=300)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    first = F.cross_entropy(model(x), y).item()
    for step in range(300):
        optimiser.zero_grad()
        loss_fn(model(x), y, step).backward()
        optimiser.step()
    assert F.cross_entropy(model(x), y).item() < first / 2


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ConfigError, match="loss: unknown loss 'hinge'"):
        dlf.DynamicalLoss("hinge", n_classes=3)
    with pytest.raises(ConfigError, match="amplitude >= 1"):
        dlf.DynamicalLoss("ce", n_classes=3, amplitude=0.5)
    with pytest.raises(ConfigError, match="schedule"):
        dlf.DynamicalLoss("ce", n_classes=3, schedule="square")
