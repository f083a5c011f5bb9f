"""The optimiser's edge of stability (λ_c = c/η) against the iteration matrices' spectra, and the
bifurcation detector's ratio and the figures following it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import dlf.plots as plots
from dlf.analysis import find_bifurcations, stability_factor, trace_stability_factor
from dlf.config import RunConfig
from dlf.engine.run import execute
from tests.conftest import tiny_config


def spectral_radius(lam: float, lr: float, beta: float, nesterov: bool) -> float:
    """Of one step of torch.optim.SGD on F = λθ²/2, state (θ, v): v' = βv + λθ, then
    θ' = θ − ηv' (heavy ball) or θ' = θ − η(λθ + βv') (Nesterov)."""
    if nesterov:
        matrix = [[1 - lr * lam * (1 + beta), -lr * beta**2], [lam, beta]]
    else:
        matrix = [[1 - lr * lam, -lr * beta], [lam, beta]]
    return float(np.abs(np.linalg.eigvals(np.array(matrix))).max())


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
def test_threshold_is_where_the_iteration_becomes_unstable(beta, nesterov):
    if nesterov and beta == 0:
        pytest.skip("nesterov needs momentum")
    lr = 0.3
    critical = stability_factor(beta, nesterov) / lr
    assert spectral_radius(critical * 0.999, lr, beta, nesterov) < 1
    assert spectral_radius(critical * 1.001, lr, beta, nesterov) > 1
    if beta == 0:
        assert critical == pytest.approx(2 / lr)


def test_trace_factor_reads_the_optimiser_from_the_stored_config():
    config = {"train": {"momentum": 0.9, "nesterov": False}}
    assert trace_stability_factor(xr.Dataset(attrs={"config": json.dumps(config)})) == 3.8
    assert trace_stability_factor(xr.Dataset()) == 2.0


@pytest.fixture(scope="module")
def heavy_ball_trace(tmp_path_factory) -> xr.Dataset:
    """Two members (A = 1, 8) trained with heavy ball, β = 0.5, η = 1.5: λ_c = 3/η = 2."""
    raw = tiny_config(
        tmp_path_factory.mktemp("heavy_ball"),
        schedule={"amplitude": [1, 8], "period": 30},
        train={"steps": 120, "lr": 1.5, "momentum": 0.5, "seeds": 1},
        analyzers={"lanczos": {"every": 4, "k": 1}, "bifurcation": {}},
    )
    return execute(RunConfig.model_validate(raw)).open()


def test_bifurcation_ratio_uses_the_heavy_ball_threshold(heavy_ball_trace):
    ds = heavy_ball_trace
    assert ds["bifurcation_ratio"].attrs["long_name"].endswith("(1: the 3/η threshold)")
    events = ds["bifurcation_lambda_onset"].values * ds["bifurcation_eta"].values / 3.0
    if len(events):
        member = ds["bifurcation_member"].values
        expected = [events[member == m].mean() if (member == m).any() else np.nan for m in (0, 1)]
        np.testing.assert_allclose(ds["bifurcation_ratio"].values, expected)
    offline = find_bifurcations(ds)
    np.testing.assert_allclose(offline["bifurcation_ratio"], ds["bifurcation_ratio"])


def test_figures_draw_the_heavy_ball_threshold(heavy_ball_trace):
    """The dynamics figure's Hessian panel and the sharpness figure draw λ_c = 3/η = 2, not
    gradient descent's 2/η."""
    fig = plots.dynamics(heavy_ball_trace)
    hessian = next(ax for ax in fig.axes if ax.get_ylabel() == "Hessian λ")
    lines = {line.get_label(): line for line in hessian.get_lines()}
    assert "2/η" not in lines
    np.testing.assert_allclose(lines["3/η"].get_ydata(), 3 / 1.5)
    fig = plots.sharpness([heavy_ball_trace])
    lam_ax = fig.axes[1]
    assert [text.get_text() for text in lam_ax.texts] == ["3/η = 2"]
    edges = [line for line in lam_ax.get_lines() if line.get_color() == "k"]
    assert [tuple(line.get_ydata()) for line in edges] == [(2.0, 2.0)]
