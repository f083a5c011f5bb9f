"""Minimal-width studies: the width bisection against a known threshold, the pruner's decisions
on hand-made learning curves, batched trials against solo runs of the same members, early stops,
divergence, bad input, a study killed with SIGKILL and resumed, and two worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import xarray as xr
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from dlf.config import Member
from dlf.engine.interrupts import terminate_as_interrupt
from dlf.engine.run import execute
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError
from dlf.studies.search import cli_run, load_study_config, open_study, run_study
from dlf.studies.search.config import PrunerConfig, WidthLadder, study_config_from_raw
from dlf.studies.search.confirm import SequentialRule, is_confirmation
from dlf.studies.search.evaluate import Candidate, run_batch, tell
from dlf.studies.search.ladder import bracket, next_job, rungs
from dlf.studies.search.liveness import HEARTBEAT_ATTR, HOST, WORKER_ATTR, is_stale
from dlf.studies.search.lock import StudyLock
from dlf.studies.search.processes import run_workers
from dlf.studies.search.proposals import fixed_proposal
from dlf.studies.search.pruning import FULL_LENGTH, TargetPruner, make_pruner
from dlf.studies.search.storage import (
    JOURNAL_NAME,
    JournalFile,
    open_storage,
    open_studies,
    study_dir,
)
from tests.conftest import study_raw

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def study_config(root: Path, **search: Any):
    return study_config_from_raw(study_raw(root, **search))


def trials_of(config, kind: str = "dynamical") -> list[optuna.trial.FrozenTrial]:
    """The search trials of a track (its confirmation rounds left out)."""
    storage = open_storage(config)
    study = optuna.load_study(study_name=f"{config.name}.{kind}", storage=storage)
    return [t for t in study.get_trials() if not is_confirmation(t)]


# --- the width ladder and its bisection ----------------------------------------------------------


def test_ladder_is_geometric_with_rounded_rungs():
    assert WidthLadder(low=2, high=64, per_octave=2).ladder() == [
        2,
        3,
        4,
        6,
        8,
        11,
        16,
        23,
        32,
        45,
        64,
    ]
    assert WidthLadder(low=5, high=7, per_octave=1).ladder() == [5, 7]
    assert WidthLadder(low=4, high=4).ladder() == [4]


def fake_trial(width: int, value: float, number_state=TrialState.COMPLETE, number: int = 0):
    trial = create_trial(
        state=number_state,
        value=value if number_state == TrialState.COMPLETE else None,
        params={"width": width},
        distributions={"width": FloatDistribution(1, 1000)},
        user_attrs={"seed_values": [value - 0.01, value + 0.01]},
    )
    trial.number = number
    return trial


def fake_round(job, value: float, number: int):
    """A finished confirmation round of ``job`` whose fresh seeds all measured ``value``."""
    trial = create_trial(
        value=value,
        params={"width": job.width},
        distributions={"width": FloatDistribution(1, 1000)},
        user_attrs={
            "role": "confirm",
            "confirms": job.confirm,
            "seeds": [10_000 + k for k in job.seeds],
            "seed_values": [value] * len(job.seeds),
        },
    )
    trial.number = number
    return trial


RULE = SequentialRule(target=0.8, level=0.9, first=4, step=4, cap=12)


@pytest.mark.parametrize("threshold", [1, 5, 12, 40, 64, 100])
def test_bisection_finds_the_narrowest_reaching_rung_in_log_probes(threshold):
    """An oracle reaches the target exactly from ``threshold`` on; each probe costs all of its
    trials when out of reach, one when it reaches, then one confirmation round."""
    ladder = WidthLadder(low=2, high=64, per_octave=2).ladder()
    trials, probed = [], []
    while (job := next_job(ladder, rungs(trials), RULE, 3)) is not None:
        probed.append(job.width)
        value = 0.9 if job.width >= threshold else 0.5
        if job.confirm is None:
            trials.append(fake_trial(job.width, value, number=len(trials)))
        else:
            trials.append(fake_round(job, value, len(trials)))
    b = bracket(ladder, rungs(trials), RULE, 3)
    expected = next((w for w in ladder if w >= threshold), None)
    assert b.converged and b.w_star == expected
    assert len(set(probed)) <= int(np.ceil(np.log2(len(ladder) + 1)))


def test_pending_trials_take_room_and_pruned_trials_never_reach():
    ladder = [2, 4, 8]
    table = rungs([fake_trial(4, 0.0, TrialState.RUNNING), fake_trial(4, 0.0, TrialState.RUNNING)])
    assert next_job(ladder, table, RULE, 2) is None  # the probe's trials are all under way
    pruned = create_trial(
        state=TrialState.PRUNED,
        params={"width": 4},
        intermediate_values={10: 0.95},
        distributions={"width": FloatDistribution(1, 1000)},
    )
    table = rungs([pruned, fake_trial(4, 0.5, number=1)])
    assert table[4].finished == 2 and table[4].best == 0.5 and table[4].best_number == 1
    job = next_job(ladder, table, RULE, 2)  # its search is done: confirm the best one
    assert (job.width, job.confirm, job.seeds) == (4, 1, range(0, 4))


# --- the target pruner ----------------------------------------------------------------------------


def curve_study(curves: list[tuple[dict[int, float], float]], period: float = 100.0):
    """A study holding full-length trials with the given learning curves and final values."""
    study = optuna.create_study(direction="maximize")
    for intermediate, final in curves:
        study.add_trial(
            create_trial(
                value=final,
                intermediate_values=intermediate,
                params={"period": period},
                distributions={"period": FloatDistribution(1, 1000)},
                user_attrs={FULL_LENGTH: True},
            )
        )
    return study


def switch_at(params) -> float:
    """Γ stops oscillating at step 1000 - T (a 1000-step run with a static last period)."""
    return 1000 - params.get("period", 1000)


def pruner(target=0.8, startup_trials=2, margin=0.0, settle=0) -> TargetPruner:
    return TargetPruner(target, startup_trials, margin, settle, switch_at)


def verdicts(p: TargetPruner, study, curve: dict[int, float], params) -> list[str | None]:
    """The verdict after each evaluation of ``curve``, as the batch monitor asks it."""
    refs = p.references(study)
    steps = sorted(curve)
    return [
        p.verdict(refs, {s: curve[s] for s in steps[: i + 1]}, params) for i in range(len(steps))
    ]


STATIC_AT_600 = {"period": 400}  # Γ static from step 600


def test_target_pruner_aligns_references_by_the_steps_since_their_gamma_became_static():
    # references switched at 900 (T = 100); 100 steps into the static phase (step 1000 - 0)
    # they gained +0.3 and -0.06 from their best-so-far; their drops from there: -0.4, +0.06
    refs = [
        ({0: 0.1, 900: 0.3, 950: 0.6, 1000: 0.5}, 0.9),
        ({0: 0.1, 900: 0.4, 950: 0.85, 1000: 0.86}, 0.8),
    ]
    study = curve_study(refs, period=100)
    p = pruner(margin=0.02)
    # the trial switched at 600: at step 650 it is 50 steps into its static phase, like the
    # references at 950, where their gains to the end were 0.9 - 0.6 and 0.8 - 0.85
    assert p.verdict(p.references(study), {0: 0.0, 600: 0.2, 650: 0.47}, STATIC_AT_600) is None
    # references' static phase (100 steps) is shorter than the 400 the trial has left: unusable
    long_refs = curve_study(
        [
            ({0: 0.1, 600: 0.3, 650: 0.6, 1000: 0.6}, 0.9),
            ({0: 0.1, 600: 0.4, 650: 0.85, 1000: 0.82}, 0.8),
        ],
        period=400,
    )
    refs = p.references(long_refs)
    assert p.verdict(refs, {0: 0.0, 600: 0.2, 650: 0.47}, STATIC_AT_600) == "hopeless"  # +0.3
    assert p.verdict(refs, {0: 0.0, 600: 0.2, 650: 0.49}, STATIC_AT_600) is None
    assert p.verdict(refs, {0: 0.0, 600: 0.9, 650: 0.89}, STATIC_AT_600) == "reached"  # -0.05
    assert p.verdict(refs, {0: 0.0, 600: 0.9, 650: 0.84}, STATIC_AT_600) is None


def test_a_late_jumping_curve_is_never_judged_while_gamma_oscillates():
    """The failure the papers' DCE runs provoked: low while Γ oscillates, a jump once static.
    References that plateaued at the target would have called it hopeless mid-run, and at the
    switch itself, before static training had time to act."""
    plateau = {s: 0.86 for s in range(0, 1001, 100)}
    study = curve_study([(plateau, 0.86), (plateau, 0.87), (plateau, 0.9)], period=400)
    late_jump = {s: 0.35 for s in range(0, 700, 100)} | {700: 0.6, 800: 0.9, 900: 0.92}
    found = verdicts(pruner(settle=200), study, late_jump, STATIC_AT_600)
    assert "hopeless" not in found
    assert found[:8] == [None] * 8  # nothing before step 600 + settle_steps (200)
    assert found[8] == "reached"  # 0.9 - the references' largest drop (0) >= 0.8


def test_target_pruner_waits_for_startup_trials_and_for_a_success():
    p = pruner()
    static = {}  # no period: the static loss, static from step 0 (as its references)

    def refs(curves):
        return p.references(curve_study(curves, period=1000))

    low = {0: 0.0}
    assert p.verdict(refs([({0: 0.3}, 0.9)]), low, static) is None  # one reference only
    assert p.verdict(refs([({0: 0.3}, 0.5), ({0: 0.3}, 0.4)]), low, static) is None  # no success
    mixed = [({0: 0.9}, 0.9), ({0: 0.3}, 0.4)]
    assert p.verdict(refs(mixed), low, static) == "hopeless"
    assert p.verdict(refs(mixed), {0: 0.95}, static) == "reached"
    running = create_trial(value=None, state=TrialState.RUNNING, intermediate_values={0: 0.0})
    assert p.prune(curve_study(mixed, period=1000), running)  # Optuna's interface agrees


# --- one batch = one ensemble run ---------------------------------------------------------------


def batch_fixture(tmp_path, curves, target, n_trials=2, **train):
    config = study_config(tmp_path, target=target)
    study = curve_study(curves)
    run = config.run.model_copy(
        update={
            "model": config.run.model.model_copy(update={"width": 4}),
            "train": config.run.train.model_copy(update=train),
        }
    )
    study.pruner = make_pruner(PrunerConfig(startup_trials=1, margin=0.0), target, run)
    candidates = []
    for i in range(n_trials):
        trial = study.ask()
        candidates.append(Candidate(trial, amplitude=2.0 + 3 * i, period=20.0))
    return study, run, candidates


def test_batched_trials_measure_what_solo_runs_of_their_members_measure(tmp_path):
    study, run, candidates = batch_fixture(tmp_path, [], target=0.6, n_trials=3)
    outcomes = run_batch(study, run, candidates, [0, 1], "val_accuracy", tmp_path / "b.nc", False)
    for candidate, outcome in zip(candidates, outcomes, strict=True):
        solo = execute(
            run,
            members=[
                Member(seed=s, amplitude=candidate.amplitude, period=20.0, lr=1.0) for s in (0, 1)
            ],
            trace_path=tmp_path / f"solo{candidate.amplitude}.nc",
        ).open()
        expected = solo["val_accuracy"].isel(eval_step=-1).values
        np.testing.assert_allclose(outcome.values, expected, rtol=0, atol=1e-12)
        assert outcome.full_length and outcome.measured_step == 80
        assert outcome.member_steps == 2 * 80 and outcome.mean == pytest.approx(expected.mean())
    trace = open_trace(tmp_path / "b.nc")
    np.testing.assert_array_equal(trace["amplitude"].values, [2, 2, 5, 5, 8, 8])


def test_a_batch_stops_once_every_trial_is_hopeless(tmp_path):
    """A success whose curve barely moved makes any trial starting at chance level hopeless."""
    curves = [({0: 0.94, 20: 0.95, 40: 0.95, 60: 0.95, 80: 0.95}, 0.95)]
    study, run, candidates = batch_fixture(tmp_path, curves, target=0.95)
    outcomes = run_batch(study, run, candidates, [0, 1], "val_accuracy", tmp_path / "b.nc", False)
    assert [o.verdict for o in outcomes] == [("hopeless", 0)] * 2
    assert all(o.state == TrialState.PRUNED and o.measured_step == 0 for o in outcomes)
    trace = open_trace(tmp_path / "b.nc")
    assert trace.attrs["status"] == "stopped" and trace.attrs["steps_completed"] == 0
    assert trace.attrs["stop_reason"] == "dlf.studies.search: every trial decided at step 0"


def test_the_pruner_reads_the_study_once_per_evaluation_round(tmp_path, monkeypatch):
    """Three trials judged at each of four rounds (steps 0-60): four storage reads, not twelve
    (with PostgreSQL each read is a query over every trial of the study)."""
    curves = [({0: 0.3, 20: 0.5, 40: 0.6, 60: 0.7, 80: 0.9}, 0.9)]
    study, run, candidates = batch_fixture(tmp_path, curves, target=0.99, n_trials=3)
    calls = {"references": 0, "verdict": 0}
    for name in calls:
        original = getattr(TargetPruner, name)

        def counted(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(TargetPruner, name, counted)
    run_batch(study, run, candidates, [0, 1], "val_accuracy", tmp_path / "b.nc", False)
    assert calls == {"references": 4, "verdict": 12}


def test_a_batch_stops_once_every_trial_surely_reached_the_target(tmp_path):
    curves = [({0: 0.3, 20: 0.5, 40: 0.6, 60: 0.7, 80: 0.9}, 0.9)]  # never dropped
    study, run, candidates = batch_fixture(tmp_path, curves, target=0.1)
    outcomes = run_batch(study, run, candidates, [0, 1], "val_accuracy", tmp_path / "b.nc", False)
    assert all(o.verdict == ("reached", 0) and o.state == TrialState.COMPLETE for o in outcomes)
    trace = open_trace(tmp_path / "b.nc")
    for i, o in enumerate(outcomes):
        at_0 = trace["val_accuracy"].isel(eval_step=0).values[2 * i : 2 * i + 2]
        assert o.mean == pytest.approx(at_0.mean())
        assert o.mean >= 0.1


def test_diverged_seeds_count_zero_and_are_recorded(tmp_path):
    study, run, candidates = batch_fixture(tmp_path, [], target=0.6, n_trials=1, lr=[10.0])
    run = run.model_copy(update={"loss": run.loss.model_copy(update={"name": "dmse1"})})
    (outcome,) = run_batch(study, run, candidates, [0, 1], "val_accuracy", tmp_path / "d.nc", False)
    assert outcome.diverged == [True, True] and outcome.values == [0.0, 0.0]
    assert outcome.state == TrialState.COMPLETE


def test_a_real_dce_trial_that_ends_above_the_target_is_not_pruned(tmp_path):
    """Real references of the same study (a near-static one that reached the target, one that
    did not) and a real DCE trial that is far below the target while Γ oscillates and jumps
    once Γ is static: it must come out COMPLETE at the target, judged only after the switch."""
    config = study_config(tmp_path, target=0.8)
    run = config.run.model_copy(
        update={
            "data": config.run.data.model_copy(update={"turns": 1.0}),
            "model": config.run.model.model_copy(update={"width": 16}),
            "train": config.run.train.model_copy(update={"steps": 800, "eval_every": 50}),
        }
    )
    study = optuna.create_study(direction="maximize")
    study.pruner = make_pruner(PrunerConfig(startup_trials=2, margin=0.0, settle_steps=0), 0.8, run)

    def candidates(points):
        out = []
        for a, t in points:
            study.enqueue_trial({"amplitude": a, "period": t})
            trial = study.ask()
            trial.suggest_float("amplitude", 1, 20)
            trial.suggest_float("period", 10, 800)
            out.append(Candidate(trial, a, t))
        return out

    refs = candidates([(1.0, 800.0), (10.0, 100.0)])
    for c, o in zip(
        refs,
        run_batch(study, run, refs, [0, 1], "val_accuracy", tmp_path / "r.nc", False),
        strict=True,
    ):
        tell(study, c, o, 0.8)
    assert max(t.value for t in study.trials) >= 0.8  # a reference reached: pruning is armed
    (late,) = candidates([(10.0, 400.0)])
    (outcome,) = run_batch(study, run, [late], [0, 1], "val_accuracy", tmp_path / "l.nc", False)
    curve = open_trace(tmp_path / "l.nc")["val_accuracy"].mean("member").to_series()
    assert curve[curve.index < 400].max() < 0.8 - 0.1  # well below the target while oscillating
    assert outcome.state == TrialState.COMPLETE and outcome.mean >= 0.8
    assert outcome.verdict is None or outcome.verdict[1] >= 400


# --- a whole study ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = study_config(root)
    return config, run_study(config)


def test_study_answers_and_writes_study_nc_and_report(finished):
    config, result = finished
    dyn, static = result.findings["dynamical"], result.findings["static"]
    assert dyn.bracket.converged or dyn.trials >= config.search.trials
    ds = xr.open_dataset(result.study_file)  # plain xarray, no dlf needed
    searched = [
        t
        for kind in ("dynamical", "static")
        for t in trials_of(config, kind)
        if not is_confirmation(t)
    ]
    assert ds.sizes["trial"] == len(searched) and ds.sizes["seed"] == 2
    assert set(ds["state"].values) <= {"COMPLETE", "PRUNED"}
    assert ds.attrs["target"] == 0.6 and list(ds.attrs["ladder"]) == [2, 4, 8]
    done = ds.where(ds["state"] == "COMPLETE", drop=True)
    np.testing.assert_allclose(done["value"], done["seed_values"].mean("seed"))
    assert (ds["amplitude"].where(ds["kind"] == "static", drop=True) == 1).all()
    report = result.report.read_text()
    assert "## Answer" in report and "accuracy_vs_width.png" in report
    assert (result.directory / "accuracy_vs_width.png").stat().st_size > 1000
    if static.w_star is not None and dyn.w_star is not None:
        assert f"w*_dyn = {dyn.w_star}" in report
    ds.close()


def test_each_trial_value_is_its_members_final_accuracy_in_its_trace(finished):
    _, result = finished
    ds = open_study(result.directory)
    for row in ds.where(ds["state"] == "COMPLETE", drop=True)["trial"].values:
        trial = ds.sel(trial=row)
        trace = open_trace(result.directory / str(trial["trace"].values))
        same = (trace["amplitude"] == trial["amplitude"]) & (trace["period"] == trial["period"])
        if trial["kind"] == "static":
            same = trace["amplitude"] == 1
        members = trace.isel(member=np.flatnonzero(same.values))
        assert int(trace["width"]) == int(trial["width"])
        at = members["val_accuracy"].sel(eval_step=int(trial["measured_step"]))
        assert float(trial["value"]) == pytest.approx(float(at.mean()))


def test_rerunning_a_finished_study_adds_no_trials_and_says_what_it_kept(finished, capsys):
    config, _ = finished
    before = {(t.number, t.state, t.value) for t in trials_of(config)}
    run_study(config)
    assert {(t.number, t.state, t.value) for t in trials_of(config)} == before
    storage = open_storage(config)
    every = [
        t
        for kind in ("dynamical", "static")
        for t in optuna.load_study(study_name=f"tiny.{kind}", storage=storage).get_trials()
    ]
    rounds = sum(is_confirmation(t) for t in every)
    assert rounds  # the study confirmed at least one rung on fresh seeds
    err = capsys.readouterr().err
    searched = len(every) - rounds
    assert f"{searched} finished search trials and {rounds} confirmation rounds kept" in err


def test_show_prints_the_answer_with_its_uncertainty_for_a_study_folder_or_file(finished, capsys):
    from dlf.cli import main

    _, result = finished
    dyn = result.findings["dynamical"]
    for path in (result.directory, result.study_file):
        assert main(["show", str(path)]) == 0
        out = capsys.readouterr().out
        assert "dynamical (dce)" in out and "static (ce)" in out
        if dyn.w_star is not None:
            assert f"w* = {dyn.w_star}" in out
            assert f"{dyn.best.value:.3f} ± {dyn.best.sem:.3f}" in out
        if dyn.below is not None:
            assert f"rung below: width {dyn.below.width}, {dyn.below.value:.3f}" in out
    ds = open_study(result.directory)
    if dyn.below is not None:
        assert ds.attrs["dynamical_below_trials"] == dyn.below.trials
        below = ds.where((ds["kind"] == "dynamical") & (ds["width"] == dyn.below.width), drop=True)
        assert dyn.below.trials == below.sizes["trial"]
        assert dyn.below.value == pytest.approx(float(below["value"].max()))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"target": 0.0}, "search.target"),
        ({"target": 1.5}, "search.target"),
        ({"amplitude": {"low": 20, "high": 5}}, "search.amplitude"),
        ({"period": {"low": 30, "high": 10}}, "search.period"),
        ({"width": {"low": 16, "high": 4}}, "search.width"),
        ({"amplitude": {"low": 0.5, "high": 5}}, "search.amplitude.low"),
        ({"period": {"low": 10, "high": 500}}, "search.period.high"),
        ({"batch": 3}, "search"),
        ({"scale": "huge"}, "search.scale"),
    ],
)
def test_bad_search_settings_name_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError) as err:
        study_config(tmp_path, **change)
    assert err.value.field == field and err.value.exit_code == 2
    assert "\n" not in str(err.value)


def test_keys_the_search_owns_and_a_static_loss_are_refused(tmp_path):
    raw = study_raw(tmp_path)
    raw["model"]["width"] = 8
    with pytest.raises(ConfigError, match=r"search\.width") as err:
        study_config_from_raw(raw)
    assert err.value.field == "model.width"
    raw = study_raw(tmp_path)
    raw["loss"]["name"] = "ce"
    with pytest.raises(ConfigError) as err:
        run_study(study_config_from_raw(raw))
    assert err.value.field == "loss.name" and "dce" in err.value.message


def test_an_unreachable_storage_is_a_config_error(tmp_path):
    config = study_config(tmp_path, storage="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError) as err:
        run_study(config)
    assert err.value.field == "search.storage" and "127.0.0.1:1" in err.value.message


def test_a_stored_study_with_another_setup_is_refused_and_left_untouched(tmp_path):
    config = study_config(tmp_path)
    open_studies(config, open_storage(config))
    journal = tmp_path / "tiny" / JOURNAL_NAME
    before = journal.read_bytes()
    changed = study_config(tmp_path, amplitude={"low": 2, "high": 50})
    with pytest.raises(ConfigError) as err:
        run_study(changed)
    assert err.value.field == "search.amplitude.high" and "10" in err.value.message
    assert journal.read_bytes() == before
    # what a trial measures may not change either, but budgets and the sampler may
    run_study_config = study_config(tmp_path, trials=3, sampler={"name": "random"})
    open_studies(run_study_config, open_storage(run_study_config))


def test_scale_presets_apply_before_command_line_overrides(tmp_path):
    raw = study_raw(tmp_path, scales={"big": {"train.steps": 500, "search.seeds": 5}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_study_config(path, ["search.scale=big", "train.steps=400"])
    assert config.run.train.steps == 400 and config.search.seeds == [0, 1, 2, 3, 4]


def test_cli_run_reports_the_answer(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study_raw(tmp_path, static_baseline=False, trials=2)))
    assert cli_run(path, [], tmp_path / "out", 1) == 0
    out = capsys.readouterr().out
    assert "report:" in out and (tmp_path / "out" / "tiny" / "report.md").exists()


def cli_is_wired() -> bool:
    from dlf.cli import parser

    _, unknown = parser().parse_known_args(["run", "study.yaml", "--workers", "2"])
    return not unknown


@pytest.mark.skipif(not cli_is_wired(), reason="dlf-study run does not dispatch studies yet")
def test_dlf_study_run_refuses_a_bad_target_with_exit_code_2(tmp_path, capsys):
    from dlf.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study_raw(tmp_path)))
    assert main(["run", str(path), "--set", "search.target=1.5", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search.target" in err


# --- lost workers, resuming, several workers ------------------------------------------------------


def test_a_running_trial_is_stale_when_its_worker_process_is_gone_or_silent():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()

    def running(worker: str, beat: float):
        return create_trial(
            state=TrialState.RUNNING, system_attrs={WORKER_ATTR: worker, HEARTBEAT_ATTR: beat}
        )

    assert is_stale(running(f"{HOST}:{gone.pid}:x", now), 60, now)
    assert not is_stale(running(f"{HOST}:{os.getppid()}:x", now), 60, now)
    assert is_stale(running(f"{HOST}:{os.getppid()}:x", now - 61), 60, now)
    assert not is_stale(running(f"elsewhere:{gone.pid}:x", now - 30), 60, now)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from dlf.studies.search import load_study_config, run_study
    run_study(load_study_config(sys.argv[1]))
    """
)


def kill_config(tmp_path) -> Path:
    """A study whose trials last seconds (so one seen running still runs when signalled)."""
    raw = study_raw(
        tmp_path,
        static_baseline=False,
        batch=1,
        trials=4,
        trials_per_width=3,
        grace_seconds=20,
        target=0.99,
        width={"low": 2, "high": 4, "per_octave": 1},
        pruner={"name": "none"},
    )
    raw["train"]["steps"] = 5000  # a trial lasts seconds, so the one seen running still runs
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stop_mid_study(tmp_path, sig: int):
    """Start a study in a subprocess, and send ``sig`` once a trial finished and one runs."""
    path = kill_config(tmp_path)
    config = load_study_config(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path)], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_journal(tmp_path / "tiny" / JOURNAL_NAME, finished=1, claimed_running=1)
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=60)
    return config


def journal_states(path: Path) -> tuple[set[int], set[int]]:
    """(finished trial ids, claimed and still RUNNING trial ids), read straight from the
    journal's lines: fast and without the journal's lock, so a watcher does not slow the study
    down and sees a claim within milliseconds (a torn last line is skipped)."""
    finished, claimed = set(), set()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return finished, claimed
    for line in lines:
        try:
            log = json.loads(line)
        except ValueError:
            continue
        if log["op_code"] == 6 and log["state"] in (1, 2, 3):  # COMPLETE, PRUNED, FAIL
            finished.add(log["trial_id"])
        elif log["op_code"] == 9 and WORKER_ATTR in log["system_attr"]:
            claimed.add(log["trial_id"])
    return finished, claimed - finished


def wait_for_journal(path: Path, finished: int, claimed_running: int, timeout: float = 600):
    """Until the journal holds ``finished`` finished trials and ``claimed_running`` trials that
    a worker claimed and still runs (a trial is RUNNING from Optuna's ``ask`` on, but only its
    claim makes it a worker's, so a signal sent before it would find nothing to release)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, running = journal_states(path)
        if len(done) >= finished and len(running) >= claimed_running:
            return
        time.sleep(0.05)
    pytest.fail(f"the study never had {finished} finished and {claimed_running} running trials")


def test_sigterm_releases_running_trials_for_a_retry_and_writes_study_nc(tmp_path):
    config = stop_mid_study(tmp_path, signal.SIGTERM)
    trials = trials_of(config)
    released = [t for t in trials if t.system_attrs.get("dlf:failed") == "released (interrupted)"]
    assert released and all(t.state == TrialState.FAIL for t in released)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in released)
    ds = open_study(tmp_path / "tiny")  # written on the way out
    assert ds.sizes["trial"] == len(trials)


@pytest.mark.parametrize("where", ["claim", "tell"])
def test_an_interrupt_while_a_trial_is_asked_or_told_leaves_none_running_or_unrecorded(
    tmp_path, monkeypatch, where
):
    """SIGTERM landing between Optuna's ask and the worker's claim left a RUNNING trial no
    worker owned (so it was not released: the SIGTERM test's rare failure); landing in the
    middle of telling a finished batch threw its results away. Both now wait for the step."""
    from dlf.studies.search import study as study_module

    real = getattr(study_module, where)
    sent = []

    def signalled(*args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once unless deferred
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, where, signalled)
    config = study_config(tmp_path, static_baseline=False, batch=1)
    with pytest.raises(KeyboardInterrupt):
        run_workers(config, 1)
    trials = trials_of(config)
    assert sent and not [t.number for t in trials if t.state == TrialState.RUNNING]
    first = trials[0]
    if where == "claim":  # released for a retry, which waits for the next run
        assert first.state == TrialState.FAIL
        assert first.system_attrs["dlf:failed"] == "released (interrupted)"
        assert [t.user_attrs.get("retry_of") for t in trials[1:]] == [0]
        assert trials[1].state == TrialState.WAITING
    else:  # the finished trial is recorded, and nothing else was asked
        assert len(trials) == 1 and first.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert first.user_attrs["measured_step"] == 80


def test_a_killed_study_resumes_keeping_finished_trials_and_retrying_running_ones(tmp_path):
    config = stop_mid_study(tmp_path, signal.SIGKILL)
    before = trials_of(config)
    finished = {t.number: t for t in before if t.state == TrialState.COMPLETE}
    lost = [t for t in before if t.state == TrialState.RUNNING]
    assert finished and lost
    claimed = [t for t in lost if WORKER_ATTR in t.system_attrs]
    assert all(is_stale(t, grace_seconds=3600) for t in claimed)  # its process is gone

    run_study(config)

    after = {t.number: t for t in trials_of(config)}
    for number, trial in finished.items():  # kept as they were
        assert after[number].state == TrialState.COMPLETE
        assert after[number].value == trial.value
        assert after[number].datetime_complete == trial.datetime_complete
    for trial in lost:  # failed, and retried exactly once with the same parameters
        assert after[trial.number].state == TrialState.FAIL
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == trial.number]
        if not trial.params:  # killed before its parameters were drawn: nothing to repeat
            assert not retries
            continue
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert trial.params.items() <= retries[0].params.items()  # killed mid-draw: rest is new
    counted = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(counted) <= config.search.trials  # nothing counted twice
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in after.values())
    ds = open_study(tmp_path / "tiny")
    assert ds.sizes["trial"] == len(after)
    assert (ds["state"] == "FAIL").sum() == len(lost)


def start_cli_study(tmp_path, workers: int) -> tuple[subprocess.Popen, Any]:
    """``dlf-study run study.yaml --workers N`` in a session of its own (so that the test can
    kill the whole process group), with its stderr in ``tmp_path/stderr.txt``."""
    path = kill_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dlf.cli", "run", str(path), "--workers", str(workers)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    return proc, load_study_config(path)


def worker_pids(config) -> set[int]:
    """The process ids of every worker that ever claimed a trial of the study."""
    ids = {t.system_attrs.get(WORKER_ATTR) for t in trials_of(config)} - {None}
    return {int(str(worker).rsplit(":", 2)[1]) for worker in ids}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` runs; returns those still running after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, 0)
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; its parent (here: init) reaps it
                    alive.add(pid)
            except (ProcessLookupError, FileNotFoundError):
                continue
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


def assert_released(config, numbers: set[int]) -> None:
    """The trials ``numbers`` were failed as interrupted, each with one waiting retry, and no
    trial is left RUNNING."""
    trials = {t.number: t for t in trials_of(config)}
    assert not [n for n, t in trials.items() if t.state == TrialState.RUNNING]
    for number in numbers:
        assert trials[number].state == TrialState.FAIL
        assert trials[number].system_attrs["dlf:failed"] == "released (interrupted)"
        retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1 and retries[0].state == TrialState.WAITING


def test_sigterm_inside_the_journal_lock_waits_for_the_append(tmp_path, monkeypatch):
    """SIGTERM (as a worker gets when its parent dies) arriving while Optuna's symlink lock is
    released used to escape as FileNotFoundError, failing the trial for good; now it waits for
    the append and its lock, then interrupts, with the record whole and no lock left."""
    journal = tmp_path / JOURNAL_NAME
    backend = JournalFile(str(journal))
    unlink = os.unlink

    def unlink_then_sigterm(path, *args, **kwargs):
        unlink(path, *args, **kwargs)
        if str(path).endswith(".rename"):  # the lock's release: after its unlink
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(os, "unlink", unlink_then_sigterm)
    with terminate_as_interrupt(), pytest.raises(KeyboardInterrupt):
        backend.append_logs([{"op_code": 0, "worker_id": "w"}])
    monkeypatch.undo()
    assert journal.read_text() == '{"op_code":0,"worker_id":"w"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL_NAME]


def test_kill_9_of_the_parent_of_two_workers_stops_them_and_releases_their_trials(tmp_path):
    """Issue 16.11: the workers of a parent killed outright (kill -9) used to go on running.
    They are told by the kernel (PR_SET_PDEATHSIG), release their trials for a retry, and exit."""
    proc, config = start_cli_study(tmp_path, workers=2)
    journal = tmp_path / "tiny" / JOURNAL_NAME
    try:
        wait_for_journal(journal, finished=0, claimed_running=2)
        running = journal_states(journal)[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        workers = worker_pids(config)
        assert len(workers) == 2
        assert wait_gone(workers, timeout=30) == set(), (tmp_path / "stderr.txt").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    numbers = {t.number for t in trials_of(config) if t._trial_id in running}
    assert len(numbers) == 2
    assert_released(config, numbers)


@pytest.mark.slow
def test_sigterm_of_the_parent_of_two_workers_releases_their_trials_and_writes_study_nc(tmp_path):
    proc, config = start_cli_study(tmp_path, workers=2)
    journal = tmp_path / "tiny" / JOURNAL_NAME
    try:
        wait_for_journal(journal, finished=1, claimed_running=2)
        running = journal_states(journal)[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, (tmp_path / "stderr.txt").read_text()
        assert wait_gone(worker_pids(config), timeout=10) == set()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    trials = trials_of(config)
    numbers = {t.number for t in trials if t._trial_id in running}
    assert len(numbers) >= 2  # those seen running (a third may have started meanwhile)
    assert_released(config, numbers)
    ds = open_study(tmp_path / "tiny")  # written by the parent on the way out
    assert ds.sizes["trial"] == len(trials) and (ds["state"] == "COMPLETE").sum() >= 1


@pytest.mark.slow
def test_kill_9_of_a_two_worker_study_then_rerun_loses_and_duplicates_no_trial(tmp_path):
    """The whole process group killed at once (nothing can be released), then run again with
    two workers: finished trials kept as they were, each running one retried exactly once."""
    proc, config = start_cli_study(tmp_path, workers=2)
    journal = tmp_path / "tiny" / JOURNAL_NAME
    try:
        wait_for_journal(journal, finished=1, claimed_running=2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    wait_gone(worker_pids(config), timeout=10)
    before = trials_of(config)
    finished = {t.number: t for t in before if t.state.is_finished()}
    lost = [t for t in before if t.state == TrialState.RUNNING]
    assert finished and len(lost) >= 2

    run_study(config, workers=2)

    after = {t.number: t for t in trials_of(config)}
    for number, trial in finished.items():
        assert (after[number].state, after[number].value) == (trial.state, trial.value)
        assert after[number].datetime_complete == trial.datetime_complete
    for trial in lost:
        assert after[trial.number].state == TrialState.FAIL
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == trial.number]
        if trial.params:
            assert len(retries) == 1 and retries[0].state.is_finished()
            assert trial.params.items() <= retries[0].params.items()
    counted = [t for t in after.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    slots = [(t.params["width"], t.user_attrs.get("slot")) for t in counted]
    assert len(set(slots)) == len(slots)  # no (width, slot) counted twice
    assert len(counted) <= config.search.trials
    assert not [t for t in after.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert open_study(tmp_path / "tiny").sizes["trial"] == len(after)


def assert_no_duplicates_and_within_budget(config) -> None:
    search = config.search
    for kind in ("dynamical", "static"):
        trials = trials_of(config, kind)
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        slots = [(t.params["width"], t.user_attrs.get("slot")) for t in trials]
        assert len(set(slots)) == len(slots)  # no (width, slot) asked twice
        per_width = search.trials_at_width(kind)
        if kind == "dynamical":
            assert all(slot is not None for _, slot in slots)  # every trial holds its slot
        for width in {w for w, _ in slots}:
            assert sum(w == width for w, _ in slots) <= per_width
    assert len(trials_of(config)) <= search.trials


def test_the_answer_does_not_depend_on_the_number_of_workers(tmp_path, finished):
    """Two worker processes: no trial duplicated, no budget overshot, and the same w* (and
    the same (A, T) at every slot) as one worker on the same seeds."""
    one_config, one = finished
    config = study_config(tmp_path)
    two = run_study(config, workers=2)
    assert_no_duplicates_and_within_budget(config)
    assert_no_duplicates_and_within_budget(one_config)
    for kind in ("dynamical", "static"):
        assert two.findings[kind].w_star == one.findings[kind].w_star
        assert two.findings[kind].bracket.converged == one.findings[kind].bracket.converged

    def proposals(cfg):
        return {
            (t.params["width"], t.user_attrs["slot"]): (t.params["amplitude"], t.params["period"])
            for t in trials_of(cfg)
        }

    same = proposals(one_config).keys() & proposals(config).keys()
    assert same and all(proposals(one_config)[k] == proposals(config)[k] for k in same)
    assert two.study_file.exists()


def test_three_commands_started_at_once_on_one_journal_duplicate_no_trial(tmp_path):
    """Three independent ``dlf-study run`` commands (one with two workers) on one study
    folder, started together: all finish, and no trial is asked twice or over the budget."""
    raw = study_raw(tmp_path, trials=10)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dlf.cli", "run", str(path)]
    procs = [
        subprocess.Popen(
            [*command, *extra],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ((), (), ("--workers", "2"))
    ]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], errors
    assert_no_duplicates_and_within_budget(study_config_from_raw(raw))


def test_sobol_slots_are_the_configured_points_then_one_sequence_in_the_box(tmp_path):
    search = study_config(tmp_path, points=[{"amplitude": 3, "period": 20}]).search
    first = fixed_proposal(search, 0)
    assert first == {"amplitude": 3.0, "period": 20.0}
    rest = [fixed_proposal(search, k) for k in range(1, 9)]
    assert rest == [fixed_proposal(search, k) for k in range(1, 9)]  # deterministic
    assert len({(p["amplitude"], p["period"]) for p in rest}) == 8
    assert all(2 <= p["amplitude"] <= 10 and 10 <= p["period"] <= 40 for p in rest)
    # the papers' point is the default first slot where it lies in the box
    outside = study_config(
        tmp_path, amplitude={"low": 2, "high": 50}, period={"low": 10, "high": 70}
    )
    assert outside.search.points == []  # T = 100 lies outside [10, 70]
    raw = study_raw(tmp_path, period={"low": 10, "high": 200})
    raw["train"]["steps"] = 400
    papers = study_config_from_raw(raw)
    assert fixed_proposal(papers.search, 0) == {"amplitude": 10.0, "period": 100.0}
    tpe = study_config(tmp_path, sampler={"name": "tpe"}).search
    assert fixed_proposal(tpe, 0) is None  # Optuna's sampler proposes


def test_the_study_lock_admits_one_holder_at_a_time_and_takes_over_a_dead_ones(tmp_path):
    import threading

    config = study_config(tmp_path)
    study_dir(config).mkdir(parents=True)
    storages = [open_storage(config) for _ in range(3)]
    held, overlaps = [0], []

    def hold(storage, i):
        for _ in range(5):
            with StudyLock(storage, "s", f"{HOST}:{os.getpid()}:t{i}", grace_seconds=60):
                held[0] += 1
                overlaps.append(held[0])
                time.sleep(0.01)
                held[0] -= 1

    threads = [threading.Thread(target=hold, args=(st, i)) for i, st in enumerate(storages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1] * 15
    # a holder killed inside the lock: its process is gone, the next worker takes over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    storage = storages[0]
    stuck = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], study_name="s.lock")
    storage.set_study_system_attr(stuck, "dlf:holder", f"{HOST}:{dead.stdout.strip()}:x")
    storage.set_study_system_attr(stuck, "dlf:stamp", time.time())
    with StudyLock(storage, "s", "me:1:y", grace_seconds=60) as lock:
        assert lock.study_id != stuck


def test_top_level_open_study_and_trace_status_match_the_measured_step(finished):
    import dlf

    _, result = finished
    ds = dlf.open_study(result.directory)
    xr.testing.assert_identical(ds, open_study(result.directory / "study.nc"))
    for row in ds["trial"].values:
        trial = ds.sel(trial=row)
        trace = open_trace(result.directory / str(trial["trace"].values))
        if int(trial["measured_step"]) < trace.attrs["total_steps"]:
            assert trace.attrs["status"] == "stopped"
            assert trace.attrs["stop_reason"].startswith("dlf.studies.search: every trial decided")
        else:
            assert trace.attrs["status"] == "complete"
