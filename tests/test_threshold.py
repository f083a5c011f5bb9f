"""The threshold study: the log-log fit against hand formulas, the per-η run plan of the 2024
protocol, config errors, and a tiny study end to end (files, resume)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import dlf
from dlf.analysis.threshold import fit_threshold, member_onsets, summary, threshold_dataset
from dlf.studies.threshold import run_threshold_study, study_points
from tests.conftest import tiny_config


def test_fit_recovers_an_exact_power_law():
    eta = np.repeat([0.25, 0.5, 1.0, 2.0], 3)
    fit = fit_threshold(eta, 1.7 * eta**-0.9)
    assert fit.exponent == pytest.approx(-0.9, abs=1e-12)
    assert fit.prefactor == pytest.approx(1.7, rel=1e-12)
    assert fit.exponent_se == pytest.approx(0.0, abs=1e-12)
    assert fit.ratio_mean == pytest.approx(np.mean(1.7 * eta**0.1 / 2), rel=1e-12)


def test_fit_standard_errors_match_the_textbook_formulas():
    rng = np.random.default_rng(0)
    eta = np.repeat([0.5, 1.0, 2.0, 4.0], 5)
    lam = 2 / eta * np.exp(0.1 * rng.standard_normal(eta.size))
    lam[3] = np.nan  # a member without an onset is left out
    fit = fit_threshold(eta, lam)
    ok = np.isfinite(lam)
    x, y = np.log(eta[ok]), np.log(lam[ok])
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    residual = y - y.mean() - slope * (x - x.mean())
    se = np.sqrt((residual**2).sum() / (x.size - 2) / sxx)
    ratio = lam[ok] * eta[ok] / 2
    assert fit.n == 19
    assert fit.exponent == pytest.approx(slope, rel=1e-10)
    assert fit.exponent_se == pytest.approx(se, rel=1e-10)
    assert fit.ratio_sem == pytest.approx(ratio.std(ddof=1) / np.sqrt(19), rel=1e-10)


def test_fit_needs_two_learning_rates():
    with pytest.raises(dlf.DlfError, match="two or more learning rates"):
        fit_threshold(np.array([1.0, 1.0, 2.0]), np.array([2.0, 1.9, np.nan]))


def test_plan_rescales_the_protocol_per_learning_rate(tmp_path):
    raw = tiny_config(tmp_path, threshold_study={"scale": "paper"})
    _, points = study_points(raw)
    assert [p.label for p in points] == ["eta-0.25", "eta-0.5", "eta-1", "eta-2", "eta-4"]
    by_label = {p.label: p.config for p in points}
    half = by_label["eta-0.5"]
    assert half.train.lr == [0.5] and half.train.steps == 200_000
    assert half.schedule.period == [10_000, 20_000] and half.schedule.amplitude == [25, 50, 75]
    assert half.train.seeds == list(range(30))
    assert half.analyzers["lanczos"]["every"] == 51  # 25/η, odd
    assert by_label["eta-4"].analyzers["lanczos"]["every"] == 7
    assert by_label["eta-4"].analyzers["bifurcation"] == {}
    assert len(dlf.config.members_of(half)) == 3 * 2 * 30


def test_bad_study_settings_name_the_field(tmp_path):
    with pytest.raises(dlf.ConfigError, match=r"threshold_study\.scale: .*'reduced' or 'paper'"):
        study_points(tiny_config(tmp_path, threshold_study={"scale": "huge"}))
    with pytest.raises(dlf.ConfigError, match=r"threshold_study\.reduced\.lrs: .*at least 2"):
        study_points(
            tiny_config(
                tmp_path,
                threshold_study={
                    "reduced": {"lrs": [1], "seeds": 1, "time_fraction": 1, "spectrum_every": 5}
                },
            )
        )
    with pytest.raises(dlf.ConfigError, match=r"threshold_study\.periods_: unknown key"):
        study_points(tiny_config(tmp_path, threshold_study={"periods_": [1]}))
    with pytest.raises(dlf.ConfigError, match="threshold_study: missing"):
        run_threshold_study(tiny_config(tmp_path), tmp_path)


def test_first_onset_per_member_from_the_event_table():
    trace = xr.Dataset(
        {
            "bifurcation_member": ("bifurcation_event", [0, 0, 2]),
            "bifurcation_start": ("bifurcation_event", [500, 100, 40]),
            "bifurcation_lambda_onset": ("bifurcation_event", [2.5, 1.5, 0.9]),
            "bifurcation_eta": ("bifurcation_event", [1.0, 1.0, 2.0]),
        },
        coords={
            name: ("member", np.array(values))
            for name, values in {
                "eta": [1.0, 1.0, 2.0],
                "amplitude": [25, 50, 25],
                "period": [100, 100, 50],
                "seed": [0, 0, 0],
            }.items()
        },
    )
    first = member_onsets(trace, "first")
    np.testing.assert_array_equal(first["lambda_onset"].values, [1.5, np.nan, 0.9])
    np.testing.assert_array_equal(first["ratio"].values, [0.75, np.nan, 0.9])
    np.testing.assert_array_equal(first["n_events"].values, [2, 0, 1])
    mean = member_onsets(trace, "mean")
    np.testing.assert_array_equal(mean["lambda_onset"].values, [2.0, np.nan, 0.9])


def test_diverged_members_are_left_out_and_counted():
    """Issue 13.1: a diverged member's onsets count in no mean and the fit; the study says how
    many were left out per η."""
    trace = xr.Dataset(
        {
            "bifurcation_member": ("bifurcation_event", [0, 1, 2, 3]),
            "bifurcation_start": ("bifurcation_event", [10, 20, 30, 40]),
            "bifurcation_lambda_onset": ("bifurcation_event", [2.0, 2.2, 1.0, 9.0]),
            "bifurcation_eta": ("bifurcation_event", [1.0, 1.0, 2.0, 2.0]),
            "diverged_step": ("member", [-1, -1, -1, 45]),
        },
        coords={
            name: ("member", np.array(values))
            for name, values in {
                "eta": [1.0, 1.0, 2.0, 2.0],
                "amplitude": [1, 1, 1, 1],
                "period": [100] * 4,
                "seed": [0, 1, 0, 1],
            }.items()
        },
    )
    onsets = member_onsets(trace, "first")
    np.testing.assert_array_equal(onsets["lambda_onset"].values, [2.0, 2.2, 1.0, np.nan])
    result = threshold_dataset(onsets, "first")
    np.testing.assert_array_equal(result["n_diverged"].values, [0, 1])
    np.testing.assert_allclose(result["lambda_mean"].values, [2.1, 1.0])
    assert result["n_fitted"].item() == 3


def test_summary_is_median_quartiles_and_a_bootstrap_interval():
    small = summary(np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0]))
    assert (small["median"], small["q25"], small["q75"], small["n"]) == (3.0, 2.0, 4.0, 5)
    assert 1.0 <= small["ci_low"] <= 3.0 <= small["ci_high"] <= 5.0
    rng = np.random.default_rng(1)
    large = summary(rng.standard_normal(400))
    # the median of n normal samples has standard error √(π/2)/√n: the 95 % interval's width
    width = 2 * 1.96 * np.sqrt(np.pi / 2) / np.sqrt(400)
    assert large["ci_high"] - large["ci_low"] == pytest.approx(width, rel=0.25)
    assert large["ci_low"] < large["median"] < large["ci_high"]
    one = summary(np.array([0.97]))
    assert one["median"] == 0.97 and np.isnan(one["ci_low"]) and one["n"] == 1
    assert summary(np.array([np.nan]))["n"] == 0


def test_threshold_nc_carries_the_distributions_of_both_ratios_and_the_delay():
    """Per η: the ratio at crossing, at visible onset and the delay over members, a diverged
    member counted and left out."""
    eta = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    trace = xr.Dataset(
        {
            "bifurcation_member": ("bifurcation_event", np.arange(6)),
            "bifurcation_start": ("bifurcation_event", [100, 110, 120, 60, 70, 80]),
            "bifurcation_lambda_onset": ("bifurcation_event", [1.9, 1.94, 1.98, 0.97, 0.99, 5]),
            "bifurcation_eta": ("bifurcation_event", eta),
            "diverged_step": ("member", [-1, -1, -1, -1, -1, 90]),
        },
        coords={
            "eta": ("member", eta),
            "amplitude": ("member", np.ones(6)),
            "period": ("member", np.full(6, 100.0)),
            "seed": ("member", np.arange(6)),
        },
    )
    crossings = xr.Dataset(
        {
            f"crossing_{key}": ("bifurcation_event", np.array(values, dtype=float))
            for key, values in {
                "ratio": [1.001, 1.002, 1.003, 1.01, 1.02, 1.5],
                "step": [60, 60, 70, 30, 50, 75],
                "delay": [40, 50, 50, 30, 20, 5],
                "bracket": [1, 1, 1, 1, 1, 25],
                "lambda_onset": [np.nan] * 6,  # no samples of their own: the detector's λ
            }.items()
        }
    )
    result = threshold_dataset(member_onsets(trace, "first", crossings), "first")
    np.testing.assert_allclose(result["ratio_onset_median"].values, [0.97, 0.98])
    np.testing.assert_allclose(result["ratio_onset_q25"].values, [0.96, 0.975])
    np.testing.assert_allclose(result["ratio_crossing_median"].values, [1.002, 1.015])
    np.testing.assert_allclose(result["delay_median"].values, [50, 25])
    np.testing.assert_array_equal(result["delay_n"].values, [3, 2])
    np.testing.assert_array_equal(result["n_diverged"].values, [0, 1])
    low, high = result["ratio_onset_ci_low"].values, result["ratio_onset_ci_high"].values
    assert (low <= result["ratio_onset_median"].values).all()
    assert (result["ratio_onset_median"].values <= high).all()
    assert result["crossing_bracket"].dims == ("study_member",)


def test_tiny_study_writes_results_and_resumes(tmp_path, capsys):
    raw = tiny_config(
        tmp_path,
        schedule={"amplitude": [1]},
        analyzers={"lanczos": {"k": 2}},
        threshold_study={  # static CE on a tiny net bounces by step ~200 at η = 2 and 4
            "amplitudes": [1],
            "periods": [100],
            "total_steps": 1200,
            "reduced": {"lrs": [2, 4], "seeds": 1, "time_fraction": 1, "spectrum_every": 20},
        },
    )
    result = run_threshold_study(raw, tmp_path / "out")
    root = tmp_path / "out" / "tiny"
    assert (root / "threshold.png").stat().st_size > 0
    assert (root / "eta-2" / "trace.nc").exists() and (root / "eta-4" / "trace.nc").exists()
    saved = dlf.open_trace(root / "threshold.nc")
    xr.testing.assert_allclose(saved, result)
    assert list(result["eta"].values) == [2.0, 4.0]
    assert result["lambda_onset"].dims == ("study_member",)
    fit = fit_threshold(result["member_eta"].values, result["lambda_onset"].values)
    assert result["exponent"].item() == pytest.approx(fit.exponent)
    assert result["ratio_mean"].item() == pytest.approx(fit.ratio_mean)
    assert (root / "eta-2" / "crossings.nc").exists()
    for name in ("ratio_onset", "ratio_crossing", "delay"):
        for stat in ("median", "q25", "q75", "ci_low", "ci_high", "n"):
            assert saved[f"{name}_{stat}"].dims == ("eta",)
    assert "λη/2 at crossing" in capsys.readouterr().out
    run_threshold_study(raw, tmp_path / "out")
    assert capsys.readouterr().out.count("already complete") == 2
