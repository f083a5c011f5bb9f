"""The ensemble trainer: members equal single-seed runs, divergence is contained, runs repeat."""

import numpy as np
import pytest
import torch

from dlf.config import Member, members_of
from dlf.engine.run import execute
from dlf.engine.trace import open_trace
from dlf.hooks.manager import load_plugins
from dlf.hooks.specs import hookimpl


def test_member_equals_same_seed_trained_alone(make_config, tmp_path):
    config = make_config(
        schedule={"amplitude": [1, 7], "period": [15, 40]},
        train={"steps": 300, "seeds": 3, "lr": [0.5, 1.0]},
    )
    ensemble = execute(config, trace_path=tmp_path / "ensemble.nc")
    members = members_of(config)
    assert len(members) == 2 * 2 * 2 * 3
    for index in (0, 7, 13, len(members) - 1):
        alone = execute(config, members=[members[index]], trace_path=tmp_path / f"m{index}.nc")
        torch.testing.assert_close(alone.theta[0], ensemble.theta[index], rtol=1e-10, atol=1e-10)
        a, e = open_trace(alone.path), open_trace(ensemble.path)
        np.testing.assert_allclose(a.loss[0], e.loss[index], rtol=1e-10, atol=1e-12)


def test_sgd_momentum_member_equals_alone(make_config, tmp_path):
    config = make_config(
        train={
            "steps": 120,
            "seeds": 3,
            "optimizer": "sgd",
            "batch_size": 16,
            "momentum": 0.9,
            "nesterov": True,
            "warmup_steps": 10,
            "decay": "linear",
            "lr": 0.3,
        },
    )
    ensemble = execute(config, trace_path=tmp_path / "e.nc")
    alone = execute(config, members=[members_of(config)[4]], trace_path=tmp_path / "a.nc")
    torch.testing.assert_close(alone.theta[0], ensemble.theta[4], rtol=1e-10, atol=1e-10)


def test_gradient_descent_step_by_hand(make_config, tmp_path):
    """Two GD steps recomputed with torch.autograd on an nn-free formula of the same network."""
    config = make_config(train={"steps": 2, "seeds": 1, "lr": 0.7}, schedule={"amplitude": 1})
    result = execute(config, trace_path=tmp_path / "t.nc")
    from dlf.numerics.data import SpiralOptions, spiral
    from dlf.numerics.models import MLP

    data = spiral(SpiralOptions(points_per_class=20))
    x = torch.tensor(data.x_train)
    y = torch.tensor(data.y_train)
    model = MLP(2, (8,), 3)
    theta = model.init([0]).requires_grad_(True)
    for _ in range(2):
        (w1, b1), (w2, b2) = model.unflatten(theta[0])
        logits = torch.relu(x @ w1 + b1) @ w2 + b2
        loss = torch.nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, theta)
        theta = (theta - 0.7 * g).detach().requires_grad_(True)
    torch.testing.assert_close(result.theta, theta.detach(), rtol=1e-12, atol=1e-12)


def test_static_last_period_switches_gamma_off(make_config, tmp_path):
    config = make_config(schedule={"amplitude": 9, "period": 20}, train={"steps": 100, "seeds": 1})
    ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
    gamma = ds.gamma.isel(member=0)
    assert float(abs(gamma.sel(step=slice(80, None)) - 1).max()) == 0
    assert float(gamma.sel(step=slice(0, 79)).max()) > 1.5


@pytest.mark.parametrize(
    ("loss", "limit"), [("mse", None), ("ce", 1e3)], ids=["non-finite", "above-limit"]
)
def test_diverging_member_is_frozen_and_recorded(make_config, tmp_path, loss, limit):
    config = make_config(
        loss={"name": loss},
        train={"steps": 80, "seeds": 2, "lr": [0.1, 1e6], "diverge_above": limit},
        schedule={"amplitude": 1},
    )
    result = execute(config, trace_path=tmp_path / "t.nc")
    ds = open_trace(result.path)
    lrs = ds.eta.values
    bad = np.flatnonzero(lrs == 1e6)
    good = np.flatnonzero(lrs == 0.1)
    assert (ds.diverged_step.values[bad] > 0).all()
    assert (ds.diverged_step.values[good] == -1).all()
    assert np.isfinite(ds.loss.values[good]).all()
    first = int(ds.diverged_step.values[bad[0]])
    failed = ds.loss.values[bad[0], first]
    assert not np.isfinite(failed) if limit is None else failed > limit
    assert (ds.loss.values[bad[0], :first] <= (limit or np.inf)).all()
    assert result.status == "complete"
    # the healthy members trained exactly as if the diverging ones were absent
    alone = execute(config, members=[members_of(config)[good[0]]], trace_path=tmp_path / "a.nc")
    torch.testing.assert_close(alone.theta[0], result.theta[good[0]], rtol=1e-10, atol=1e-10)


def test_all_members_diverging_ends_the_run(make_config, tmp_path):
    config = make_config(train={"steps": 2000, "seeds": 2, "lr": 1e8})
    result = execute(config, trace_path=tmp_path / "t.nc")
    ds = open_trace(result.path)
    assert result.status == "diverged" and ds.attrs["status"] == "diverged"
    assert ds.attrs["steps_completed"] < 2000
    assert (ds.diverged_step.values >= 0).all()


def test_same_config_gives_the_same_trace(make_config, tmp_path):
    config = make_config()
    a = open_trace(execute(config, trace_path=tmp_path / "a.nc").path)
    b = open_trace(execute(config, trace_path=tmp_path / "b.nc").path)
    for name in ("loss", "static_loss", "train_accuracy", "val_accuracy", "gamma"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


@pytest.mark.parametrize("loss", ["ce", "mse", "dmse1", "dmse2"])
def test_every_loss_trains(make_config, tmp_path, loss):
    config = make_config(
        loss={"name": loss}, train={"steps": 200, "lr": 0.1 if "mse" in loss else 1.0}
    )
    ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
    assert (ds.loss.isel(step=-1) < ds.loss.isel(step=0)).all()


def test_member_metadata_in_trace(make_config, tmp_path):
    config = make_config()
    ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
    expected = members_of(config)
    assert [
        Member(seed=int(s), amplitude=float(a), period=float(t), lr=float(e))
        for s, a, t, e in zip(
            ds.seed.values, ds.amplitude.values, ds.period.values, ds.eta.values, strict=True
        )
    ] == expected
    assert int(ds.width) == 8


def test_evaluate_hook_sees_the_traces_metrics_under_their_trace_names(make_config, tmp_path):
    """``dlf_evaluate`` gets what the trace records at each evaluation; the old attribute name
    ``train_accuracy`` still reads it, with a DeprecationWarning."""
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    class Watch:
        @hookimpl
        def dlf_evaluate(self, state) -> None:
            with pytest.warns(DeprecationWarning, match="eval_train_accuracy"):
                old = state.train_accuracy
            assert old is state.eval_train_accuracy
            seen[state.step] = (state.val_accuracy.numpy(), state.eval_train_accuracy.numpy())

    config = make_config(train={"steps": 60, "eval_every": 20, "seeds": 2})
    plugins = load_plugins(config.plugins)
    plugins.manager.register(Watch())
    trace = open_trace(execute(config, trace_path=tmp_path / "t.nc", plugins=plugins).path)
    assert sorted(seen) == [0, 20, 40, 60]
    for step, (val, train) in seen.items():
        np.testing.assert_array_equal(trace.val_accuracy.sel(eval_step=step).values, val)
        np.testing.assert_array_equal(trace.eval_train_accuracy.sel(eval_step=step).values, train)
