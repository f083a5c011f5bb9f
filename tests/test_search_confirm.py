"""Confirming a min-width study's answer on fresh seeds: planted problems (a fake evaluator
whose per-seed outcomes are drawn from a known success probability per width), the sequential
rule against closed-form values, resuming mid-confirmation, seed offsets, the authors' spiral
draw."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pytest
import xarray as xr
from optuna.trial import TrialState

import dlf.studies.search.study as study_module
from dlf.errors import ConfigError
from dlf.numerics.data import spiral_points
from dlf.studies.search import run_study
from dlf.studies.search.config import setup_fingerprint, study_config_from_raw
from dlf.studies.search.confirm import (
    NOT_REACHED,
    REACHES,
    WITHIN_NOISE,
    SequentialRule,
    is_confirmation,
)
from dlf.studies.search.evaluate import Outcome
from dlf.studies.search.storage import open_storage, open_studies
from tests.conftest import study_raw

LEARNED, STUCK = 0.95, 0.45  # a seed learns the task or stays stuck: bimodal outcomes
TARGET = 0.85


class Planted:
    """A fake evaluator: at width w a seed learns with probability ``success[w]`` (whatever A
    and T; ``static[w]`` for the static loss), so the true seed-mean is 0.45 + 0.5·success[w].
    Records every call."""

    def __init__(
        self,
        success: dict[int, float],
        interrupt_at: int | None = None,
        static: dict[int, float] | None = None,
    ) -> None:
        self.success = success
        self.static = static or {w: 0.0 for w in success}  # the static loss (ce)
        self.calls: list[tuple[int, tuple[int, ...], bool]] = []
        self.interrupt_at = interrupt_at  # raise KeyboardInterrupt in this confirmation call

    def value(self, width: int, amplitude: float, seed: int, loss: str) -> float:
        u = np.random.default_rng([seed, width, round(amplitude * 1000)]).random()
        success = self.success if loss == "dce" else self.static
        return LEARNED if u < success[width] else STUCK

    def __call__(self, study, run, candidates, seeds, metric, trace, progress, decide_early=True):
        width = run.model.width
        if not decide_early and self.interrupt_at is not None:
            confirmations = sum(not early for _, _, early in self.calls)
            if confirmations == self.interrupt_at:
                raise KeyboardInterrupt
        self.calls.append((width, tuple(seeds), decide_early))
        n, steps = len(seeds), run.train.steps
        outcomes = []
        for c in candidates:
            values = [self.value(width, c.amplitude, s, run.loss.name) for s in seeds]
            outcomes.append(
                Outcome(values, values, values, [0.0] * n, [False] * n, steps, True, steps * n)
            )
        return outcomes


def planted_config(root, **search: Any):
    planted = {
        "target": TARGET,
        "seeds": 4,
        "width": {"low": 2, "high": 32, "per_octave": 1},
        "trials_per_width": 8,
        "batch": 4,
        "trials": 64,
        "static_baseline": False,
    }
    raw = study_raw(root, **{**planted, **search})
    return study_config_from_raw(raw)


def run_planted(monkeypatch, root, planted: Planted, **search: Any):
    monkeypatch.setattr(study_module, "run_batch", planted)
    config = planted_config(root, **search)
    return config, run_study(config)


NEAR_MISS = {2: 0.0, 4: 0.2, 8: 0.7, 16: 1.0, 32: 1.0}  # true means .45 .55 .80 .95 .95
CLEAR = {2: 0.0, 4: 0.2, 8: 0.97, 16: 1.0, 32: 1.0}  # width 8: .935, clearly above


def test_a_rung_whose_best_of_n_clears_the_target_by_luck_is_not_called_reached(
    monkeypatch, tmp_path
):
    """At width 8 every seed learns with probability 0.7 (true mean 0.80 < 0.85): the best of
    its (A, T) trials clears the target on its 4 search seeds, fresh seeds refuse it, and the
    answer is width 16 (true mean 0.95), confirmed at the first look."""
    planted = Planted(NEAR_MISS)
    config, result = run_planted(monkeypatch, tmp_path, planted)
    found = result.findings["dynamical"]
    lucky = found.rungs[8]
    assert lucky.search.value >= TARGET  # the search seeds alone would have said "reached"
    assert lucky.verdict in (WITHIN_NOISE, NOT_REACHED)
    assert lucky.confirmed.mean < TARGET and lucky.confirmed.n > config.search.confirm_seeds
    assert found.w_star == 16 and found.rungs[16].verdict == REACHES
    assert found.rungs[16].confirmed.n == config.search.confirm_seeds  # clear: one round
    # selection and decision on disjoint seeds
    search_seeds = {s for _, seeds, early in planted.calls if early for s in seeds}
    fresh = {s for _, seeds, early in planted.calls if not early for s in seeds}
    assert search_seeds == {0, 1, 2, 3} and min(fresh) == 10_000 and not search_seeds & fresh
    sentence = found.sentence(TARGET, "val_accuracy")
    assert "w* = 16 confirmed" in sentence and f"{lucky.verdict}: 8 (" in sentence
    assert "fresh seeds" in sentence and "P(reach)" in sentence


def test_a_rung_that_truly_reaches_is_confirmed_on_both_tracks(monkeypatch, tmp_path):
    """Width 8 learns with probability 0.97 under the dynamical loss (true mean 0.935), the
    static loss only from width 32: both answers confirmed, and the report compares them."""
    planted = Planted(CLEAR, static={2: 0.0, 4: 0.0, 8: 0.1, 16: 0.6, 32: 1.0})
    _, result = run_planted(monkeypatch, tmp_path, planted, static_baseline=True)
    found = result.findings["dynamical"]
    assert found.w_star == 8 and found.rungs[8].verdict == REACHES
    assert found.rungs[4].verdict == NOT_REACHED
    c = found.rungs[8].confirmed
    assert c.lower >= TARGET and c.p_reach > 0.95
    static = result.findings["static"]
    assert static.w_star == 32 and static.rungs[16].verdict in (NOT_REACHED, WITHIN_NOISE)
    s = static.rungs[32].confirmed
    report = result.report.read_text()
    assert (
        f"**w*_dyn = 8 ({c.mean:.3f} ± {c.sem:.3f}, {c.n} fresh seeds) versus "
        f"w*_static = 32 ({s.mean:.3f} ± {s.sem:.3f}, {s.n} fresh seeds)"
    ) in report
    assert "| dynamical | 8 |" in report and "| static | 32 |" in report


def test_study_nc_holds_each_rung_tried_with_its_confirmation(monkeypatch, tmp_path):
    planted = Planted(NEAR_MISS)
    _, result = run_planted(monkeypatch, tmp_path, planted)
    ds = xr.open_dataset(result.study_file, engine="netcdf4")
    rungs = ds.where(ds["rung_kind"] == "dynamical", drop=True)
    found = result.findings["dynamical"]
    assert sorted(int(w) for w in rungs["rung_width"].values) == sorted(found.rungs)
    for i in range(rungs.sizes["rung"]):
        row = rungs.isel(rung=i)
        width = int(row["rung_width"])
        values = row["confirm_values"].values
        values = values[np.isfinite(values)]
        assert int(row["confirm_n"]) == len(values)
        assert str(row["rung_verdict"].values) == found.rungs[width].verdict
        if len(values):
            assert float(row["confirm_mean"]) == pytest.approx(values.mean())
            sem = values.std(ddof=1) / math.sqrt(len(values))
            assert float(row["confirm_sem"]) == pytest.approx(sem)
            assert float(row["reach_fraction"]) == pytest.approx((values >= TARGET).mean())
            assert 0 <= float(row["p_reach"]) <= 1
    assert ds.attrs["confirm_level"] == 0.9 and list(ds.attrs["confirm_rounds"]) == [20, 40, 60, 80]
    assert "w* = 16 confirmed" in ds.attrs["dynamical_answer"]
    ds.close()


def test_confirmation_rounds_are_trials_of_the_optuna_study(monkeypatch, tmp_path):
    planted = Planted(NEAR_MISS)
    config, _ = run_planted(monkeypatch, tmp_path, planted)
    study = optuna.load_study(study_name="tiny.dynamical", storage=open_storage(config))
    rounds = [t for t in study.get_trials() if is_confirmation(t)]
    confirm_calls = [c for c in planted.calls if not c[2]]
    assert len(rounds) == len(confirm_calls) and all(t.state == TrialState.COMPLETE for t in rounds)
    for t in rounds:
        selected = study.trials[t.user_attrs["confirms"]]
        assert t.params == selected.params  # the selected (A, T) at its width, on new seeds
        assert t.value == pytest.approx(np.mean(t.user_attrs["seed_values"]))


def test_resuming_mid_confirmation_loses_nothing(monkeypatch, tmp_path):
    """Interrupted in its second confirmation round, the study keeps the first round; the
    rerun trains only what is missing and answers as an uninterrupted study does."""
    whole = run_planted(monkeypatch, tmp_path / "whole", Planted(NEAR_MISS))[1]
    first = Planted(NEAR_MISS, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        run_planted(monkeypatch, tmp_path / "cut", first)
    config = planted_config(tmp_path / "cut")
    study = optuna.load_study(study_name="tiny.dynamical", storage=open_storage(config))
    rounds = [t for t in study.get_trials() if is_confirmation(t)]
    assert [t.state for t in rounds] == [TrialState.COMPLETE, TrialState.FAIL]
    assert not [t for t in study.get_trials() if t.state == TrialState.WAITING]
    second = Planted(NEAR_MISS)
    _, resumed = run_planted(monkeypatch, tmp_path / "cut", second)
    done_before = {(w, s) for w, s, _ in first.calls}
    assert not done_before & {(w, s) for w, s, _ in second.calls}  # nothing trained twice
    a, b = whole.findings["dynamical"], resumed.findings["dynamical"]
    assert a.w_star == b.w_star
    for width, rung in a.rungs.items():
        assert b.rungs[width].verdict == rung.verdict
        assert b.rungs[width].confirm_values == rung.confirm_values


def test_seed_offset_shifts_search_and_confirmation_seeds(monkeypatch, tmp_path):
    planted = Planted(CLEAR)
    config, _ = run_planted(monkeypatch, tmp_path, planted, seed_offset=100_000)
    search_seeds = {s for _, seeds, early in planted.calls if early for s in seeds}
    fresh = {s for _, seeds, early in planted.calls if not early for s in seeds}
    assert search_seeds == {100_000, 100_001, 100_002, 100_003}
    assert min(fresh) == 110_000
    assert setup_fingerprint(config)["search.seeds"] == sorted(search_seeds)
    plain = planted_config(tmp_path / "other")
    assert "search.seed_offset" not in setup_fingerprint(plain)  # older studies still open
    with pytest.raises(ConfigError) as err:  # the stored study measured other seeds
        open_studies(planted_config(tmp_path), open_storage(config))
    assert err.value.field == "search.seed_offset"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"confirm_max": 10, "confirm_seeds": 20}, "search"),
        ({"seeds": [0, 10_000]}, "search.seeds"),
        ({"confirm_level": 0.4}, "search.confirm_level"),
        ({"seed_offset": -1}, "search.seed_offset"),
    ],
)
def test_bad_confirmation_settings_name_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError) as err:
        planted_config(tmp_path, **change)
    assert err.value.field == field and err.value.exit_code == 2


# --- the sequential rule against closed forms ----------------------------------------------------

RULE = SequentialRule(target=0.85, level=0.9, first=20, step=20, cap=80)


def test_the_rule_splits_its_error_over_the_looks_the_cap_allows():
    assert RULE.looks == 4 and RULE.per_look == pytest.approx(0.975)
    assert [RULE.next_round(n) for n in (0, 20, 60, 80)] == [
        range(0, 20),
        range(20, 40),
        range(60, 80),
        range(80, 80),
    ]
    values = [0.8, 0.9] * 10  # mean 0.85, sd 0.0513
    e = RULE.confirmed(values)
    sem = np.std(values, ddof=1) / math.sqrt(20)
    t_975_19 = 2.093024054408263  # Student's t, 19 degrees of freedom, one-sided 97.5 %
    assert e.lower == pytest.approx(0.85 - t_975_19 * sem) and e.p_reach == pytest.approx(0.5)
    assert e.verdict is None  # the target is inside: another round is due


def test_the_sequential_rule_stops_early_when_the_evidence_is_clear():
    assert RULE.confirmed([LEARNED] * 19 + [STUCK]).verdict == REACHES  # 0.925 ± 0.025
    assert RULE.confirmed([STUCK] * 15 + [LEARNED] * 5).verdict == NOT_REACHED
    borderline = [LEARNED] * 16 + [STUCK] * 4  # 0.85 ± 0.046: undecided until the cap
    assert RULE.confirmed(borderline).verdict is None
    assert RULE.confirmed(borderline * 4).verdict == WITHIN_NOISE


def test_the_fraction_of_seeds_reaching_has_a_clopper_pearson_interval():
    e = RULE.confirmed([STUCK] * 20)
    assert e.reached == 0 and e.fraction_low == 0
    assert e.fraction_high == pytest.approx(1 - 0.025 ** (1 / 20))  # exact for k = 0
    e = RULE.confirmed([LEARNED] * 20)
    assert e.fraction_low == pytest.approx(0.025 ** (1 / 20)) and e.fraction_high == 1


# --- the authors' spiral draw --------------------------------------------------------------------


def test_the_authors_draw_is_the_notebooks_legacy_randn_arm_after_arm():
    x, y = spiral_points(3, 50, 0.2, 2.0, seed=7, draw="authors")
    np.random.seed(7)  # the notebooks' way: one global seed, randn per arm in class order
    for arm in range(3):
        r = np.linspace(0, 1, 50)
        t = np.linspace(2 * np.pi / 3 * arm, 2 * np.pi / 3 * arm + 4 * np.pi, 50)
        t = t + 0.2 * np.random.randn(50)
        expected = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        np.testing.assert_allclose(x[arm * 50 : (arm + 1) * 50], expected, rtol=0, atol=1e-15)
        assert (y[arm * 50 : (arm + 1) * 50] == arm).all()
    other, _ = spiral_points(3, 50, 0.2, 2.0, seed=7)
    assert not np.allclose(other, x)  # the default stream draws other point sets
