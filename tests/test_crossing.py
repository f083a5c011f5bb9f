"""Edge-of-stability crossings: the adaptive cadence, the crossing on a planted quadratic whose
crossing step is known in closed form, the bounce's growth rate against GD on a quadratic, the
analyzer's λmax and error bound against dense Hessians (torch.func) on a tiny net, and replays
that resolve a sparse run's crossings to the step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import dlf
from dlf.analysis.crossing import (
    find_crossings,
    growth_rate,
    lambda_from_growth,
    last_crossing,
)
from dlf.config import RunConfig, validate
from dlf.curvature import lanczos
from dlf.curvature.cadence import AdaptiveCadence
from dlf.hooks.manager import load_plugins
from dlf.studies.replay import replay, replay_windows
from tests.conftest import tiny_config

BAND = (0.9, 1.15)


def sampled_steps(factor_of, steps: int, sparse: int = 25) -> list[int]:
    """The steps an adaptive cadence samples when the factor at step t is ``factor_of(t)``."""
    cadence, taken = AdaptiveCadence(1, sparse, *BAND), []
    for t in range(steps):
        if cadence.due(t):
            taken.append(t)
            cadence.observe(t, np.array([factor_of(t)]))
    return taken


def test_cadence_is_sparse_far_from_the_band_and_dense_inside_it():
    taken = sampled_steps(lambda t: 0.3 + 0.001 * t, 1200)  # in the band for 600 ≤ t ≤ 850
    inside = [t for t in range(1200) if BAND[0] <= 0.3 + 0.001 * t <= BAND[1]]
    assert set(inside) <= set(taken)
    assert taken[0] == 0 and len(taken) < 1200 / 25 + len(inside) + 15
    assert max(np.diff([t for t in taken if t > 900])) == 25  # sparse again above the band


def test_cadence_keeps_sampling_a_bounce_whose_walls_straddle_the_band():
    """Walls at 0.8 and 1.2 alternate: each step has one wall outside the band, yet the other
    (the previous step's) is inside."""
    taken = sampled_steps(lambda t: 0.5 + 0.002 * t if t < 250 else (0.85, 1.1)[t % 2], 600)
    assert set(range(250, 600)) <= set(taken)


def test_cadence_rejects_a_band_without_one():
    with pytest.raises(ValueError, match="must contain 1"):
        AdaptiveCadence(1, 25, 1.05, 1.2)


def test_bad_cadence_options_name_the_field(tmp_path):
    options = load_plugins().registries.analyzers.get("lanczos", "analyzers.lanczos").Options
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.lanczos\.band: must be \[low, high\]"):
        validate(options, {"band": [1.05, 1.2]}, prefix="analyzers.lanczos")
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.lanczos\.windows: each window"):
        validate(options, {"windows": [[50, 40]]}, prefix="analyzers.lanczos")
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.lanczos\.cadence: .*'adaptive'"):
        validate(options, {"cadence": "sometimes"}, prefix="analyzers.lanczos")


def planted_run(eta: float, lam0: float, rate: float, steps: int, n: int = 30):
    """Samples of the top eigenpair of H(t) = Q diag(λ0 + rate·t, bulk) Qᵀ by warm-started
    Lanczos on the adaptive cadence: steps, factors ηλ/2, their bounds (η ε / 2), λ."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    bulk = torch.linspace(-0.2, 0.25, n - 1, dtype=torch.float64) / eta  # below λ0
    cadence = AdaptiveCadence(1, 25, *BAND)
    start = lanczos.random_vectors((1, n), q, gen)
    rows = []
    for t in range(steps):
        if not cadence.due(t):
            continue
        h = (
            q
            @ torch.diag(torch.cat([torch.tensor([lam0 + rate * t], dtype=torch.float64), bulk]))
            @ q.T
        )
        found = lanczos.top_eigenpairs(lambda v, h=h: v @ h, start, 1, 1e-6, 60, gen)
        start = found.vectors[:, 0]
        lam, eps = float(found.values[0, 0]), float(found.residuals[0, 0])
        rows.append((t, eta * lam / 2, eta * eps / 2, lam))
        cadence.observe(t, np.array([eta * lam / 2]))
    return [np.array(c) for c in zip(*rows, strict=True)]


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_crossing_lands_on_the_closed_form_step_of_a_planted_quadratic(eta):
    """λmax(t) = λ0 + κt reaches 2/η at t* = (2/η − λ0)/κ, between integer steps."""
    lam0, rate = 0.3 / eta, 0.0037 / eta
    exact = (2 / eta - lam0) / rate  # 459.46
    steps, factor, bound, lam = planted_run(eta, lam0, rate, 700)
    found = last_crossing(steps, factor, bound)
    assert found is not None and found.resolved
    assert (found.before, found.after) == (int(np.floor(exact)), int(np.ceil(exact)))
    assert found.earliest - 1e-9 <= exact <= found.step + 1e-9  # the bound brackets t*
    assert found.step == pytest.approx(exact, abs=1e-3)
    assert len(steps) < 200  # sparse outside the band: 700 steps, far fewer solves
    true = lam0 + rate * steps
    assert np.all((true >= lam - 1e-12) & (true <= lam + 2 * bound / eta + 1e-12))


def gd_on_a_quadratic(lam: float, eta: float, momentum: float, steps: int) -> np.ndarray:
    """GD (heavy ball) on F = λx²/2 + y²/4 − 0.3y: the gradient's component along x, sampled."""
    theta, v = np.array([1e-6, 0.0]), np.zeros(2)
    hess, b = np.diag([lam, 0.5]), np.array([0.0, 0.3])
    along = []
    for _ in range(steps):
        grad = hess @ theta - b
        along.append(grad[0] + 0.01)  # a constant drift along x, which the difference removes
        v = momentum * v + grad
        theta = theta - eta * v
    return np.array(along)


@pytest.mark.parametrize(
    ("lam", "eta", "momentum"), [(2.3, 1.0, 0.0), (1.2, 2.0, 0.0), (3.3, 1.0, 0.5)]
)
def test_growth_rate_of_the_bounce_gives_lambda(lam, eta, momentum):
    along = gd_on_a_quadratic(lam, eta, momentum, 80)
    rate, rate_se, n = growth_rate(np.arange(80), along, 40.0, 79)
    assert n == 39
    assert lambda_from_growth(rate, eta, momentum) == pytest.approx(lam, rel=1e-6)
    assert rate_se < 1e-6
    if momentum == 0:
        assert rate == pytest.approx(abs(1 - eta * lam), rel=1e-9)


# --- runs -------------------------------------------------------------------------------------


def eos_config(tmp_path, name: str, lanczos_options: dict, steps: int = 600) -> RunConfig:
    """A tiny net whose λmax crosses 2/η near steps 290 (η = 2) and 500 (η = 1), then bounces."""
    raw = tiny_config(
        tmp_path,
        name=name,
        data={"name": "spiral", "points_per_class": 30},
        model={"width": 16, "dtype": "float64"},
        schedule={"amplitude": [70], "period": 300},
        train={"steps": steps, "lr": [1.0, 2.0], "seeds": 2, "eval_every": 1000},
        analyzers={"lanczos": lanczos_options, "bifurcation": {}},
    )
    return validate(RunConfig, raw)


def test_adaptive_samples_match_dense_hessians_within_their_bound(tmp_path):
    adaptive = dlf.execute(
        eos_config(tmp_path, "adaptive", {"k": 1, "every": 25, "cadence": "adaptive"}, 360)
    ).open()
    steps = adaptive["lanczos_step"].values
    assert 40 < len(steps) < 300  # sparse early on, every step near the crossings
    factor = adaptive["lanczos_factor"].values
    sampled = np.isfinite(factor)
    assert sampled.any(axis=0).all() and not sampled.all()  # each step solves only who is due
    for m in range(factor.shape[0]):  # every step of a member in its band is sampled
        mine = steps[sampled[m]]
        inside = (factor[m][sampled[m]] >= BAND[0]) & (factor[m][sampled[m]] <= BAND[1])
        assert set(mine[inside] + 1) <= set(mine) | {360}
    windows = [(int(t), int(t)) for t in steps[::4]]
    exact = {"k": 1, "mode": "exact", "every": 10**6, "windows": windows}
    dense = dlf.execute(eos_config(tmp_path, "exact", exact, 360)).open()
    at = [t for t, _ in windows]
    truth = dense["lanczos_eigenvalues"].sel(lanczos_step=at).values[..., 0]
    lam = adaptive["lanczos_eigenvalues"].sel(lanczos_step=at).values[..., 0]
    bound = adaptive["lanczos_error_bound"].sel(lanczos_step=at).values
    ok = np.isfinite(lam)
    truth, lam, bound = truth[ok], lam[ok], bound[ok]
    assert ok.sum() > 40
    assert np.all(truth >= lam - 1e-10 * np.abs(truth))
    assert np.all(truth <= lam + bound + 1e-10 * np.abs(truth))
    np.testing.assert_array_equal(adaptive["lanczos_converged"].values, sampled)
    np.testing.assert_array_equal(adaptive["lanczos_matvecs"].values > 0, sampled)
    np.testing.assert_array_equal(adaptive["lanczos_factor"].attrs["band"], BAND)
    lr = adaptive["lr"].sel(step=steps).values
    np.testing.assert_allclose(
        adaptive["lanczos_factor"].values, lr * adaptive["lanczos_eigenvalues"].values[..., 0] / 2
    )
    bracket = find_crossings(adaptive)["crossing_bracket"].values
    found = np.isfinite(bracket)  # one event bounces with λmax·η/2 ≤ 0.9997: no crossing
    assert found.sum() == 2 and (bracket[found] == 1).all()


def test_replay_resolves_a_sparse_runs_crossings_as_a_dense_run_does(tmp_path):
    dense = find_crossings(dlf.execute(eos_config(tmp_path, "dense", {"k": 1})).open())
    sparse_trace = dlf.execute(eos_config(tmp_path, "sparse", {"k": 1, "every": 25})).open()
    sparse = find_crossings(sparse_trace)
    assert (sparse["crossing_bracket"].values > 1).all()  # not resolved by the run itself
    resolved = replay(sparse_trace, tmp_path / "replays")
    assert (resolved["crossing_bracket"].values == 1).all()
    assert len(list((tmp_path / "replays").glob("replay-*.nc"))) == 4
    for key in ("step", "before", "delay", "growth_rate", "lambda_growth"):
        np.testing.assert_allclose(
            resolved[f"crossing_{key}"].values, dense[f"crossing_{key}"].values, rtol=1e-4
        )
    assert np.isfinite(dense["crossing_growth_rate"].values).all()


def test_replay_refuses_a_trace_it_cannot_reproduce(tmp_path):
    trace = dlf.execute(eos_config(tmp_path, "sparse", {"k": 1, "every": 25})).open()
    config = json.loads(trace.attrs["config"])
    config["schedule"]["amplitude"] = [60]  # another trajectory than the one recorded
    trace.attrs["config"] = json.dumps(config)
    with pytest.raises(dlf.DlfError, match="does not reproduce the recorded losses"):
        replay(trace)


def test_crossings_dataset_opens_with_plain_xarray(tmp_path):
    ds = dlf.execute(eos_config(tmp_path, "dense", {"k": 1}, 360)).open()
    crossings = find_crossings(ds)
    crossings.to_netcdf(tmp_path / "c.nc", engine="netcdf4")
    again = xr.open_dataset(tmp_path / "c.nc", engine="netcdf4")
    assert again["crossing_step"].dims == ("bifurcation_event",)


def test_replay_windows_cover_coarse_crossings_and_events_already_above_one():
    trace = xr.Dataset(
        {
            "bifurcation_member": ("bifurcation_event", [0, 0, 1, 2, 3]),
            "bifurcation_start": ("bifurcation_event", [300, 900, 400, 500, 600]),
        }
    )
    nan = np.nan
    crossings = xr.Dataset(
        {
            f"crossing_{key}": ("bifurcation_event", np.array(values, dtype=float))
            for key, values in {
                "before": [250, 850, nan, nan, nan],  # coarse; resolved; none: above 1, below 1
                "bracket": [25, 1, nan, nan, nan],  # sampled to the onset, sparse before it
                "growth_n": [0, 40, nan, nan, nan],
                "searched_from": [50, 301, 150, 250, 350],
                "max_factor": [1.1, 1.2, 1.05, 0.95, 0.85],
                "last_sample": [300, 900, 400, 500, 550],
            }.items()
        }
    )
    expected = {0: [(250, 302)], 1: [(150, 402)], 3: [(350, 602)]}
    assert replay_windows(trace, crossings) == expected


def test_a_trace_without_the_factor_is_a_clear_error():
    trace = xr.Dataset({"bifurcation_start": ("bifurcation_event", [3])})
    with pytest.raises(dlf.DlfError, match="trace has no lanczos_factor"):
        find_crossings(trace)
