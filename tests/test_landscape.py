"""The landscape analyzer: slices and trajectories against an analytic quadratic, the period-2
bounce above 2/λ1, training unchanged by recording, its schedule, and its direction choices.

A network without hidden layer is linear in θ, so a squared-error loss of its outputs is exactly
quadratic: F(θ; Γ) = (1/P)(Aθ − y)ᵀ G (Aθ − y), with A built by hand from the inputs below and G
the per-output weights. Runs use it by building their model without hidden layer.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from dlf_landscape import LandscapeOptions
from dlf_landscape.directions import filter_normalized_pair, principal_plane
from dlf_landscape.grid import evaluate_plane

import dlf
import dlf.engine.run
from dlf.config import validate
from dlf.hooks.manager import Plugins, plugins_with
from dlf.numerics.data import spiral_points
from dlf.numerics.losses import Loss, weighted_cross_entropy
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective
from dlf.numerics.schedules import triangle

N_PER_CLASS = 10
OUTPUT_WEIGHTS = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # separates the Hessian blocks


def output_weighted_squared_error(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """(1/P) Σ_j Σ_i c_i Γ_i (f_ji − δ_{i,y_j})² with fixed c = (1, 2, 3): quadratic for a linear
    model, and without the identical per-output Hessian blocks (degenerate eigenvalues) of MSE."""
    target = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    weights = (OUTPUT_WEIGHTS.to(logits) * gamma).unsqueeze(-2)
    return (weights * (logits - target) ** 2).sum(dim=-1).mean(dim=-1)


def quadratic_plugins() -> Plugins:
    plugins = plugins_with([])  # its own: the quadratic loss is added to it
    loss = Loss("quadratic", output_weighted_squared_error, dynamical=True, static_name="mse")
    plugins.registries.losses.add("quadratic", loss)
    return plugins


@pytest.fixture
def linear_model(monkeypatch):
    """Runs built while active use a network without hidden layer (F quadratic in θ)."""

    def linear(config, models, data) -> MLP:
        return MLP(data.n_features, (), data.n_classes, config.activation)

    monkeypatch.setattr(dlf.engine.run, "build_model", linear)


class Quadratic:
    """F(θ; Γ) of the linear model on the spiral, its gradient and Hessian, by hand."""

    def __init__(self) -> None:
        x, y = spiral_points(3, N_PER_CLASS, 0.2, 2.0, seed=0)
        p, c = len(y), 3
        # θ = [W (2×3, row-major), b (3)]; output f_ji = Σ_k x_jk W_ki + b_i is row (j, i) of A θ.
        self.a = np.zeros((p * c, 9))
        for j, i in itertools.product(range(p), range(c)):
            self.a[j * c + i, [i, c + i]] = x[j]
            self.a[j * c + i, 2 * c + i] = 1.0
        self.y = np.eye(c)[y].reshape(-1)
        self.p, self.c = p, c

    def weights(self, gamma: np.ndarray) -> np.ndarray:
        return np.tile(OUTPUT_WEIGHTS.numpy() * gamma, self.p)

    def loss(self, theta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        r = theta @ self.a.T - self.y
        return (r**2 * self.weights(gamma)).sum(axis=-1) / self.p

    def grad(self, theta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return 2 / self.p * self.a.T @ (self.weights(gamma) * (self.a @ theta - self.y))

    def hessian(self, gamma: np.ndarray) -> np.ndarray:
        return 2 / self.p * self.a.T @ (self.weights(gamma)[:, None] * self.a)


def gammas(steps: int, amplitude: float, period: float) -> np.ndarray:
    t = torch.arange(steps)
    one = torch.ones(1, dtype=torch.float64)
    return triangle(t, amplitude * one, period * one, 3)[:, 0].numpy()


def quadratic_config(make_config, amplitude: float, steps: int, lr: float, landscape: dict):
    return make_config(
        data={"points_per_class": N_PER_CLASS},
        loss={"name": "quadratic"},
        schedule={"amplitude": amplitude, "period": 20, "static_last_period": False},
        train={"steps": steps, "seeds": 1, "lr": lr},
        analyzers={"landscape": landscape},
    )


def test_slice_and_trajectory_equal_the_analytic_quadratic(linear_model, make_config, tmp_path):
    t, future, lr = 6, 4, 0.05
    landscape = {"steps": [t], "solver": "exact", "grid": 7, "radius": 0.3, "future": future}
    config = quadratic_config(make_config, 5.0, 12, lr, landscape)
    trace = dlf.execute(config, plugins=quadratic_plugins(), trace_path=tmp_path / "q.nc").open()

    q, gamma = Quadratic(), gammas(12, 5.0, 20.0)
    thetas = [MLP(2, (), 3).init([0])[0].numpy()]
    for s in range(t + future):
        thetas.append(thetas[-1] - lr * q.grad(thetas[-1], gamma[s]))
    values, vectors = np.linalg.eigh(q.hessian(gamma[t]))
    assert np.all(np.diff(values[::-1][:3]) < -1e-3 * values[-1])  # v1, v2 are well defined
    np.testing.assert_allclose(trace.landscape_eigenvalues[0], values[::-1][:2], rtol=1e-10)

    center, plane = thetas[t], vectors[:, ::-1][:, :2].T
    grid = np.linspace(-0.3, 0.3, 7)
    ab = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1)
    after = np.array(thetas[t + 1 :]) - center
    errors = []
    for signs in itertools.product((1, -1), repeat=2):  # eigenvectors are defined up to sign
        signed = np.array(signs)[:, None] * plane
        expected = q.loss(center + ab @ signed, gamma[t])
        errors.append(
            max(
                np.abs(trace.landscape_loss[0].values - expected).max(),
                np.abs(trace.landscape_trajectory[0].values - after @ signed.T).max(),
            )
        )
    assert min(errors) < 1e-10

    off_plane = np.linalg.norm(after - (after @ plane.T) @ plane, axis=1)
    np.testing.assert_allclose(trace.landscape_trajectory_residual[0], off_plane, atol=1e-12)
    frozen = [q.loss(th, gamma[t]) for th in thetas[t + 1 :]]
    np.testing.assert_allclose(trace.landscape_trajectory_loss[0], frozen, rtol=1e-10)
    current = [q.loss(thetas[t + k], gamma[t + k]) for k in range(1, future + 1)]
    np.testing.assert_allclose(trace.landscape_trajectory_current_loss[0], current, rtol=1e-10)
    np.testing.assert_allclose(
        trace.landscape_trajectory_current_loss[0], trace.loss[0, t + 1 : t + 1 + future]
    )
    assert int(trace.landscape_step[0]) == t and int(trace.landscape_member[0]) == 0


def test_gd_above_two_over_lambda1_bounces_along_v1(linear_model, make_config, tmp_path):
    """(1 − ηλ1) < −1: the v1-coordinate of θ_{t+k} − θ_t changes sign every step, and grows;
    ηλ2 < 2: the v2-coordinate keeps its sign."""
    values = np.linalg.eigvalsh(Quadratic().hessian(np.ones(3)))[::-1]
    lr = 2.1 / values[0]
    assert lr * values[1] < 2
    config = quadratic_config(make_config, 1.0, 40, lr, {"steps": [10], "grid": 5, "future": 20})
    trace = dlf.execute(config, plugins=quadratic_plugins(), trace_path=tmp_path / "b.nc").open()

    np.testing.assert_allclose(trace.landscape_eigenvalues[0], values[:2], rtol=1e-6)
    a, b = trace.landscape_trajectory[0].values.T
    assert np.all(np.sign(a[1:]) == -np.sign(a[:-1]))
    assert np.all(np.abs(a[2:]) > np.abs(a[:-2]))
    assert np.all(np.sign(b) == np.sign(b[0]))


def test_recording_does_not_change_training(make_config, tmp_path):
    base = {"train": {"steps": 60, "seeds": 2}}
    plain = dlf.execute(make_config(**base), trace_path=tmp_path / "plain.nc")
    for directions in ("hessian", "random", "pca"):
        landscape = {
            "steps": [12, 30],
            "every": 25,
            "members": [0, 3],
            "directions": directions,
            "pca_every": 3,
            "grid": 5,
            "future": 6,
        }
        config = make_config(**base, analyzers={"landscape": landscape})
        sliced = dlf.execute(config, trace_path=tmp_path / f"{directions}.nc")
        a, b = plain.open(), sliced.open()
        assert np.array_equal(a.loss.values, b.loss.values)
        assert torch.equal(plain.theta, sliced.theta)
        steps = [12, 25, 30, 50] if directions == "pca" else [0, 12, 25, 30, 50]  # pca: history
        assert list(b.landscape_step.values) == [s for s in steps for _ in (0, 3)]
        assert list(b.landscape_member.values) == [0, 3] * len(steps)
        assert np.isfinite(b.landscape_loss.values).all()
        assert np.isfinite(b.landscape_trajectory.values).all()


class StepSpy:
    """Sees ``dlf_step_end`` exactly at the steps where some analyzer is due."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    @dlf.hookimpl
    def dlf_step_end(self, state: dlf.StepState) -> None:
        self.steps.append(state.step)


def test_due_at_slice_steps_and_the_following_future_steps(make_config, tmp_path):
    spy = StepSpy()
    plugins = plugins_with([spy])
    landscape = {"steps": [10, 31, 58], "every": 25, "grid": 3, "future": 2}
    config = make_config(train={"steps": 60, "seeds": 1}, analyzers={"landscape": landscape})
    trace = dlf.execute(config, plugins=plugins, trace_path=tmp_path / "d.nc").open()
    assert spy.steps == [0, 1, 2, 10, 11, 12, 25, 26, 27, 31, 32, 33, 50, 51, 52, 58, 59]
    assert list(trace.landscape_step.values) == [0, 10, 25, 31, 50, 58]
    assert list(trace.landscape_onset.values) == [-1] * 6
    cut_short = trace.landscape_trajectory[-1]  # the run ends one step after the last slice
    assert np.isfinite(cut_short[0]).all() and np.isnan(cut_short[1]).all()


def test_slices_at_each_reported_bifurcation_onset(make_config, tmp_path):
    """η = 2 makes the tiny net bounce (an event near step 110): the member is sliced once, at
    the first step after the detector reports the event, and the slice names its onset."""
    analyzers = {"bifurcation": {}, "landscape": {"at_bifurcations": True, "grid": 3, "future": 4}}
    config = make_config(
        train={"steps": 300, "seeds": 1, "lr": 2.0},
        schedule={"amplitude": 1},
        analyzers=analyzers,
    )
    trace = dlf.execute(config, trace_path=tmp_path / "o.nc").open()
    assert trace.sizes["bifurcation_event"] == 1 and trace.sizes["landscape_slice"] == 1
    onset = int(trace.bifurcation_start[0])
    assert int(trace.landscape_onset[0]) == onset < int(trace.landscape_step[0])
    assert np.isfinite(trace.landscape_trajectory).all()


class InstabilitySpy:
    """A third-party plugin that only implements the bifurcation analyzer's announced event."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    @dlf.hookimpl
    def dlf_instability(self, run: dlf.RunContext, member: int, onset: int, step: int) -> None:
        self.calls.append((member, onset, step))


def test_onsets_are_announced_to_any_plugin_through_a_hook(make_config, tmp_path):
    spy = InstabilitySpy()
    plugins = plugins_with([spy])
    config = make_config(
        train={"steps": 300, "seeds": 1, "lr": 2.0},
        schedule={"amplitude": 1},
        analyzers={"bifurcation": {}},
    )
    trace = dlf.execute(config, plugins=plugins, trace_path=tmp_path / "i.nc").open()
    onsets = [(0, int(start)) for start in trace.bifurcation_start.values]
    assert onsets and [(m, o) for m, o, _ in spy.calls] == onsets
    assert all(step >= onset for _, onset, step in spy.calls)


def tiny_objective() -> Objective:
    x, y = spiral_points(3, 7, 0.2, 2.0, seed=3)
    loss = Loss("dce", weighted_cross_entropy, dynamical=True, static_name="ce")
    return Objective(MLP(2, (6,), 3), loss, loss, torch.tensor(x), torch.tensor(y))


def test_chunked_grid_equals_point_by_point():
    objective = tiny_objective()
    gen = torch.Generator().manual_seed(0)
    center = objective.model.init([1])[0]
    directions = torch.randn(2, len(center), generator=gen, dtype=torch.float64)
    gamma = torch.tensor([0.5, 2.0, 0.5], dtype=torch.float64)
    coords = torch.linspace(-1, 1, 6, dtype=torch.float64)
    chunked = evaluate_plane(objective, center, directions, gamma, coords, chunk=7)
    whole = evaluate_plane(objective, center, directions, gamma, coords, chunk=1000)
    for i, j in itertools.product(range(6), repeat=2):
        point = center + coords[i] * directions[0] + coords[j] * directions[1]
        expected = objective(point[None], gamma[None])[0]
        torch.testing.assert_close(chunked[i, j], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=0)


def test_random_directions_are_filter_normalized_and_orthogonal():
    model = MLP(2, (4, 5), 3)
    theta = model.init([2], scheme="glorot")[0]
    first, second = filter_normalized_pair(model, theta, torch.Generator().manual_seed(1))
    for (w1, b1), (_, b2), (w, _) in zip(
        model.unflatten(first), model.unflatten(second), model.unflatten(theta), strict=True
    ):
        torch.testing.assert_close(w1.norm(dim=0), w.norm(dim=0))  # one norm per neuron
        assert torch.all(b1 == 0) and torch.all(b2 == 0)
    weights_only = torch.cat([w.reshape(-1) for w, _ in model.unflatten(theta)])
    torch.testing.assert_close(
        first @ second, torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(second.norm(), weights_only.norm())


def test_pca_recovers_a_planted_plane():
    gen = torch.Generator().manual_seed(4)
    basis, _ = torch.linalg.qr(torch.randn(50, 2, generator=gen, dtype=torch.float64))
    coefficients = torch.randn(12, 2, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    plane = principal_plane(coefficients @ basis.T)
    torch.testing.assert_close(plane @ plane.T, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(plane.T @ plane, basis @ basis.T)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": [5], "directions": "eigen"}, "directions"),
        ({"steps": [5, 5]}, "steps"),
        ({}, "landscape"),
        ({"steps": [3], "directions": "pca", "pca_every": 5}, "landscape"),
        ({"steps": [5], "members": [9]}, "members"),
        ({"steps": [500]}, "steps"),
        ({"at_bifurcations": True}, "at_bifurcations"),
        ({"every": 5, "every_start": 20, "every_stop": 20}, "landscape"),
    ],
)
def test_bad_options_name_the_field(make_config, tmp_path, options, field):
    config = make_config(train={"seeds": 2}, analyzers={"landscape": options})
    with pytest.raises(dlf.ConfigError) as info:
        dlf.execute(config, trace_path=tmp_path / "x.nc")
    assert info.value.field.startswith("analyzers.landscape")
    assert field in info.value.field
    assert not (tmp_path / "x.nc").exists()


def test_options_default_to_the_paper_slices():
    options = validate(LandscapeOptions, {"steps": [8000]})
    assert (options.directions, options.grid, options.future, options.members) == (
        "hessian",
        41,
        20,
        [0],
    )


def test_cadence_window_and_which_slices_were_listed(make_config, tmp_path):
    landscape = {
        "steps": [10, 30],
        "every": 10,
        "every_start": 20,
        "every_stop": 50,
        "grid": 3,
        "future": 2,
    }
    config = make_config(train={"steps": 60, "seeds": 1}, analyzers={"landscape": landscape})
    trace = dlf.execute(config, trace_path=tmp_path / "c.nc").open()
    assert list(trace.landscape_step.values) == [10, 20, 30, 40]
    assert list(trace.landscape_listed.values) == [True, False, True, False]
    assert list(trace.landscape_cadence.values) == [False, True, True, True]


def test_consecutive_hessian_slices_keep_the_eigenvectors_sign():
    from types import SimpleNamespace

    from dlf_landscape.analyzer import LandscapeAnalyzer

    analyzer = SimpleNamespace(_last_directions={})
    first = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    flipped = torch.tensor([[-0.99, 0.1, 0.0], [0.1, 0.99, 0.0]])  # v1's sign came out flipped
    assert torch.equal(LandscapeAnalyzer._keep_sign(analyzer, 0, first), first)
    kept = LandscapeAnalyzer._keep_sign(analyzer, 0, flipped)
    assert torch.equal(kept, torch.tensor([[0.99, -0.1, 0.0], [0.1, 0.99, 0.0]]))
    other = LandscapeAnalyzer._keep_sign(analyzer, 1, -first)  # members are tracked apart
    assert torch.equal(other, -first)


def test_the_cadences_former_names_configure_the_same_slicer():
    """``every`` is every analyzer's run cadence; the slicer's own is ``slice_every`` (with
    ``slice_start``, ``slice_stop``), and configs written with the former names still work."""
    former = validate(LandscapeOptions, {"every": 10, "every_start": 20, "every_stop": 50})
    current = validate(LandscapeOptions, {"slice_every": 10, "slice_start": 20, "slice_stop": 50})
    assert former == current and current.every == 1
    with pytest.raises(dlf.ConfigError, match="not both"):
        validate(LandscapeOptions, {"every": 10, "slice_every": 10})
