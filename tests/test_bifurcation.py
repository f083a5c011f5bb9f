"""The bifurcation detector on series whose instabilities are known: planted oscillations, gradient
descent on a moving quadratic valley (unstable exactly above λ = 2/η) and on a cubic potential
(the logistic map: periods 2, 4, 8 and chaos at known ηλ), online against offline, and a run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import dlf
from dlf.analysis import BifurcationDetector, BifurcationSettings, events_dataset, find_bifurcations
from dlf.analysis.bifurcation import two_walls
from dlf.config import RunConfig, validate
from dlf.hooks.manager import load_plugins
from tests.conftest import tiny_config


def detect(loss: np.ndarray, eta: float = 1.0, **settings) -> list:
    """Offline events of one series."""
    detector = BifurcationDetector(1, BifurcationSettings(**settings))
    detector.add_loss(0, loss[:, None], np.full((len(loss), 1), eta))
    detector.finish()
    return detector.events()


def planted(n: int = 3000) -> np.ndarray:
    """A rising trend with period-2 bouncing in 500–1199 (period 4 on top in 800–999) and in
    2000–2299 (period 2 only); the bounce switches on over 5 steps."""
    t = np.arange(n, dtype=float)
    trend = 1 + 1e-3 * t + 0.05 * np.sin(2 * np.pi * t / 3000)
    ramp = np.clip((t - 500) / 5, 0, 1) * (t < 1200) + np.clip((t - 2000) / 5, 0, 1) * (t < 2300)
    split = ((t >= 800) & (t < 1000)) * 0.004 * np.cos(np.pi * t / 2 + 0.3)
    return trend + ramp * 0.01 * (-1) ** t + split


def test_planted_period_two_and_four_are_found_at_their_onsets():
    events = detect(planted())
    assert [(ev.max_period) for ev in events] == [4, 2]
    first, second = events
    assert 500 <= first.start <= 503 and 1196 <= first.end <= 1200
    assert 2000 <= second.start <= 2003 and 2296 <= second.end <= 2300


def test_smooth_series_with_rounding_noise_has_no_events():
    t = np.arange(5000, dtype=float)
    smooth = 1 + 0.5 * np.exp(-t / 300) + 0.1 * np.sin(2 * np.pi * t / 500)
    noise = 1e-14 * np.random.default_rng(0).standard_normal(len(t))
    assert detect(smooth + noise) == []
    # the same noise on a flat stretch bounces below the rounding floor only
    assert detect(np.ones_like(t) + noise) == []


def test_a_gap_shorter_than_max_gap_does_not_split_an_event():
    loss = planted()
    loss[700:730] = loss[700]  # 30 calm steps inside the first instability
    assert len(detect(loss, max_gap=50)) == 2
    split = detect(loss, max_gap=20)
    assert len(split) == 3 and split[0].end == 701 and 730 <= split[1].start <= 733


def moving_valley(eta: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GD on F_t(x) = λ(t)/2 (x − v t)² − κ t, λ ramping 1.6/η → 2.2/η; F and λ per step.

    The valley moves, so the iterate lags it and a bounce δ shows in F at first order
    (λ u* δ); a 1e-9 random kick per step stands in for the noise of a real landscape.
    """
    rng = np.random.default_rng(seed)
    lam = np.linspace(1.6, 2.2, n) / eta
    v, kappa = 1e-3, 1e-6
    x, loss = 0.0, np.empty(n)
    for t in range(n):
        u = x - v * t
        loss[t] = lam[t] * u * u / 2 - kappa * t
        x = x - eta * lam[t] * u + 1e-9 * rng.standard_normal()
    return lam, loss


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_gd_on_a_quadratic_valley_bounces_once_lambda_passes_two_over_eta(eta):
    lam, loss = moving_valley(eta)
    detector = BifurcationDetector(1)
    detector.add_loss(0, loss[:, None], np.full((len(loss), 1), eta))
    for step in range(0, len(loss), 10):  # a spectrum analyzer every 10 steps
        detector.add_spectrum(step, np.array([[lam[step], 0.5 * lam[step], 0.25 * lam[step]]]))
    detector.finish()
    (event,) = detector.events()
    crossing = int(np.argmax(lam * eta > 2))
    assert event.start > crossing  # nothing while GD is stable
    assert event.lambdas[0] * eta / 2 == pytest.approx(1.0, abs=0.03)
    assert event.lambdas[1] == pytest.approx(event.lambdas[0] / 2)
    assert event.eta == eta


def cubic_gd(eta_lambda: float, n: int = 1500) -> np.ndarray:
    """F along GD x ← x − η(λx + x²) on F = λx²/2 + x³/3 (λ = 1): the logistic map with r = 1 + ηλ.

    Its attractor has period 2 for 2 < ηλ < √6, 4 up to 2.5441, 8 up to 2.5644, then chaos.
    """
    x, loss = 1e-6, np.empty(n)
    for t in range(n):
        loss[t] = x * x / 2 + x**3 / 3
        x = x - eta_lambda * (x + x * x)
    return loss


@pytest.mark.parametrize(
    ("eta_lambda", "period"), [(1.9, None), (2.3, 2), (2.5, 4), (2.56, 8), (2.6, 16)]
)
def test_gd_on_a_cubic_reaches_the_logistic_maps_periods(eta_lambda, period):
    events = detect(cubic_gd(eta_lambda), eta=eta_lambda)
    assert [ev.max_period for ev in events] == ([] if period is None else [period])


def series_dataset(loss: np.ndarray, lam_steps: np.ndarray, lam: np.ndarray) -> xr.Dataset:
    """A minimal trace: loss/lr (member, step), lanczos eigenvalues, period, classes."""
    m, n = loss.shape
    return xr.Dataset(
        {
            "loss": (("member", "step"), loss),
            "lr": (("member", "step"), np.ones_like(loss)),
            "diverged_step": ("member", np.full(m, -1)),
            "lanczos_eigenvalues": (("member", "lanczos_step", "lanczos_index"), lam),
        },
        coords={
            "step": np.arange(n),
            "lanczos_step": lam_steps,
            "period": ("member", np.full(m, 400.0)),
            "class_index": np.arange(3),
        },
    )


def test_online_detection_in_any_blocks_equals_offline():
    rng = np.random.default_rng(1)
    loss = np.stack([planted(), planted()[::-1].copy(), cubic_gd(2.56, 3000)])
    lam_steps = np.arange(3, 3000, 7)
    lam = rng.uniform(0.5, 2.5, size=(3, len(lam_steps), 3))
    offline = find_bifurcations(series_dataset(loss, lam_steps, lam))
    assert offline["bifurcation_event"].size >= 4

    online = BifurcationDetector(3)
    first, k = 0, 0
    while first < loss.shape[1]:  # blocks of 1 to 300 steps; samples up to 40 steps ahead
        size = int(rng.integers(1, 300))
        online.add_loss(
            first, loss[:, first : first + size].T, np.ones((min(size, 3000 - first), 3))
        )
        first += size
        while k < len(lam_steps) and lam_steps[k] < first + 40:
            online.add_spectrum(int(lam_steps[k]), lam[:, k])
            k += 1
        # bounded by the λ window, block and lead, not by the ~3000-step event of member 2
        assert online.samples_held <= (2 * 250 + 300 + 40) // 7 + 2
    online.finish()
    streamed = events_dataset(online.events(), np.full(3, 400.0), 3, online.settings)
    xr.testing.assert_identical(streamed, offline)


def test_lambda_at_onset_is_interpolated_and_the_2021_jump_found():
    loss = planted()[None]
    lam_steps = np.arange(0, 3000, 25)
    lam = np.full((1, len(lam_steps), 3), 1.0)
    lam[0, :, 0] = 1 + lam_steps / 1000  # λmax = 1 + t/1000 ...
    lam[0, lam_steps >= 600, 0] += 0.3  # ... jumping by 0.3 at the sample of step 600
    ds = find_bifurcations(series_dataset(loss, lam_steps, lam))
    start = ds["bifurcation_start"].values
    onset = 1 + start / 1000 + 0.3 * (start >= 600)
    np.testing.assert_allclose(ds["bifurcation_lambda_onset"].values, onset, rtol=1e-12)
    assert list(ds["bifurcation_jump_step"].values) == [600, -1]
    assert list(ds["bifurcation_cycle"].values) == [start[0] // 1200, start[1] // 1200]
    assert list(ds["bifurcation_class"].values) == [(start[0] // 400) % 3, (start[1] // 400) % 3]
    assert ds["bifurcation_mean_lambda_onset"].item() == pytest.approx(onset.mean())
    assert ds["bifurcation_ratio"].item() == pytest.approx(onset.mean() / 2)
    assert ds["bifurcation_count"].item() == 2


@pytest.mark.parametrize(("cadence", "expected"), [(1, 2.0), (25, 2.0), (50, 1.5)])
def test_lambda_at_onset_is_the_mean_of_the_two_walls(cadence, expected):
    """Bouncing, the curvature alternates: 1.5 on even steps, 2.5 on odd ones."""
    lam_steps = np.arange(0, 3000, cadence)
    lam = np.where(lam_steps % 2 == 0, 1.5, 2.5)[None, :, None].repeat(3, axis=2)
    ds = find_bifurcations(series_dataset(planted()[None], lam_steps, lam))
    np.testing.assert_allclose(ds["bifurcation_lambda_onset"].values, expected)


def test_lambda_is_not_taken_from_samples_far_from_the_onset():
    lam = np.full((1, 2, 3), 2.0)
    far = find_bifurcations(series_dataset(planted()[None], np.array([0, 2800]), lam))
    assert np.isnan(far["bifurcation_lambda_onset"].values).all()


def test_losses_after_divergence_are_ignored():
    ds = series_dataset(planted()[None], np.array([0]), np.ones((1, 1, 3)))
    ds["diverged_step"][:] = 1000
    assert list(find_bifurcations(ds)["bifurcation_end"].values) == [999]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="power of 2"):
        BifurcationSettings(max_period=12)
    with pytest.raises(ValueError, match="expected losses from step 0"):
        BifurcationDetector(1).add_loss(5, np.ones((3, 1)), np.ones((3, 1)))
    cls = load_plugins().registries.analyzers.get("bifurcation", "analyzers.bifurcation")
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.bifurcation\.every: .*only 1"):
        validate(cls.Options, {"every": 5}, prefix="analyzers.bifurcation")
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.bifurcation\.min_lenght: unknown key"):
        validate(cls.Options, {"min_lenght": 5}, prefix="analyzers.bifurcation")


def test_run_records_events_equal_to_the_offline_detector(tmp_path):
    raw = tiny_config(
        tmp_path,
        schedule={"amplitude": [1, 10], "period": 50},
        train={"steps": 240, "lr": [2.0, 4.0], "seeds": 1, "eval_every": 100},
        analyzers={"lanczos": {"every": 5}, "bifurcation": {}},
    )
    ds = dlf.execute(validate(RunConfig, raw)).open()
    assert ds["bifurcation_start"].dims == ("bifurcation_event",)
    for key in ("member", "end", "cycle", "class", "lambda_onset", "lambda2", "lambda3"):
        assert ds[f"bifurcation_{key}"].dims == ("bifurcation_event",)
    assert ds["bifurcation_max_period"].dims == ("bifurcation_event",)
    for key in ("mean_lambda_onset", "ratio", "count"):
        assert ds[f"bifurcation_{key}"].dims == ("member",)
    assert ds["bifurcation_event"].size >= 1
    assert np.isfinite(ds["bifurcation_lambda_onset"].values).all()
    offline = find_bifurcations(ds)
    recorded = ds[list(offline.data_vars)]
    recorded = recorded.drop_vars(list(recorded.coords)).drop_attrs(deep=False)
    xr.testing.assert_identical(offline, recorded)


def test_two_walls_skip_samples_that_left_the_member_out():
    """A per-member cadence records NaN for members not sampled at a step: no wall of theirs."""
    steps = np.array([10, 11, 12, 13, 14])
    values = np.array([[1.0], [3.0], [np.nan], [np.nan], [1.4]]).repeat(3, axis=1)
    # even steps 10 and 14 interpolate to 1.2 at step 12; odd: only 11, so no odd wall at 12
    np.testing.assert_allclose(two_walls(steps, values, 12), [1.2, 1.2, 1.2])
    np.testing.assert_allclose(two_walls(steps, values, 11), [2.05, 2.05, 2.05])  # (1.1 + 3)/2
