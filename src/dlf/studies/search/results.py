"""What a study found: the answer (w*, best A and T) and ``study.nc`` with one entry per trial.

``study.nc`` has a ``trial`` dimension over the trials of both Optuna studies (``kind`` says
which) and a ``seed`` dimension for per-seed metrics. It is plain NetCDF: ``xarray.open_dataset``
reads it; :func:`open_study` is the same, loaded into memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import xarray as xr
from optuna.trial import FrozenTrial, TrialState

from dlf.engine.trace import open_netcdf, write_netcdf
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import (
    NOT_REACHED,
    REACHES,
    WITHIN_NOISE,
    Estimate,
    SequentialRule,
    is_confirmation,
)
from dlf.studies.search.ladder import FINISHED, Bracket, bracket, rungs, trial_width
from dlf.studies.search.liveness import FAILED_ATTR, RETRY_OF
from dlf.studies.search.storage import redact

STUDY_FILE = "study.nc"


@dataclass(frozen=True)
class Best:
    """The best trial at a width: its schedule, seed-mean metric with its standard error, and
    how many trials that width had (the best of many is an optimistic pick)."""

    width: int
    number: int
    amplitude: float
    period: float
    value: float
    sem: float
    trials: int

    def describe(self, dynamical: bool) -> str:
        text = f"{self.value:.3f} ± {self.sem:.3f}"
        if dynamical:
            text += f" at A = {self.amplitude:.3g}, T = {self.period:.3g}"
        trials = "1 trial" if self.trials == 1 else f"best of {self.trials} trials"
        return f"{text}, {trials}"


@dataclass(frozen=True)
class RungResult:
    """One rung tried: the (A, T) the search selected there, its confirmation on fresh seeds
    and the verdict (None: still searching or confirming)."""

    width: int
    search: Best | None
    confirmed: Estimate | None
    verdict: str | None
    by_search: bool  # decided on the search seeds alone (clearly below the target there)
    member_steps: int  # of its confirmation rounds
    confirm_seeds: tuple[int, ...] = ()
    confirm_values: tuple[float, ...] = ()

    def describe(self, dynamical: bool) -> str:
        """E.g. ``0.910 ± 0.010, 40 fresh seeds, 39/40 seeds reach, P(reach) 0.99``."""
        c = self.confirmed
        if c is None or c.n == 0:
            found = "" if self.search is None else self.search.describe(dynamical)
            return f"search {found}; not confirmed" if found else "nothing completed"
        at = ""
        if dynamical and self.search is not None:
            at = f" at A = {self.search.amplitude:.3g}, T = {self.search.period:.3g}"
        return (
            f"{c.mean:.3f} ± {c.sem:.3f}, {c.n} fresh seeds{at}, "
            f"{c.reached}/{c.n} seeds reach, P(reach) {c.p_reach:.2f}"
        )


@dataclass(frozen=True)
class Finding:
    """One track's answer: the bracket on w*, every rung tried, the best trial at w* and at
    the rung below it (on the search seeds)."""

    kind: str
    loss: str
    bracket: Bracket
    best: Best | None  # at w*
    below: Best | None  # at the rung just below w* (or the widest rung, if none reaches)
    trials: int
    member_steps: int
    rungs: dict[int, RungResult] = field(default_factory=dict)

    @property
    def w_star(self) -> int | None:
        return self.bracket.w_star

    def sentence(self, target: float, metric: str) -> str:
        """The answer with its evidence, e.g. ``w* = 64 confirmed (…); within noise: 45 (…)``;
        never a bare number."""
        dynamical = self.kind == "dynamical"
        if not self.bracket.converged:
            return f"{self.loss}: not converged yet, {self.bracket.describe()}{self._tried()}"
        if self.w_star is None:
            widest = self.bracket.ladder[-1]
            return (
                f"{self.loss} is not confirmed to reach {metric} ≥ {target:g} up to width "
                f"{widest}{self._tried()}"
            )
        text = (
            f"{self.loss}: w* = {self.w_star} confirmed to reach {metric} ≥ {target:g} "
            f"({self.rungs[self.w_star].describe(dynamical)})"
        )
        return text + self._tried(below=self.w_star)

    def _tried(self, below: int | None = None) -> str:
        """The decided rungs (below ``below``), grouped by verdict, widest first."""
        dynamical = self.kind == "dynamical"
        parts = []
        for verdict in (WITHIN_NOISE, NOT_REACHED, REACHES):
            widths = [
                w
                for w in sorted(self.rungs, reverse=True)
                if self.rungs[w].verdict == verdict and (below is None or w < below)
            ]
            if widths:
                listed = ", ".join(f"{w} ({self.rungs[w].describe(dynamical)})" for w in widths)
                parts.append(f"{verdict}: {listed}")
        return "; " + "; ".join(parts) if parts else ""


def sem(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def best_at(trials: list[FrozenTrial], width: int) -> Best | None:
    """The completed trial with the highest value at ``width`` (None: none completed there)."""
    at = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and trial_width(t) == width and t.value is not None
    ]
    if not at:
        return None
    top = max(at, key=lambda t: float(t.value))  # type: ignore[arg-type]
    finished = sum(t.state in FINISHED and trial_width(t) == width for t in trials)
    return Best(
        width,
        top.number,
        float(top.params.get("amplitude", 1.0)),
        float(top.params.get("period", np.nan)),
        float(top.value),  # type: ignore[arg-type]
        sem(top.user_attrs.get("seed_values", [])),
        finished,
    )


def find(config: StudyConfig, kind: str, loss: str, trials: list[FrozenTrial]) -> Finding:
    search = config.search
    per_width = search.trials_at_width(kind)
    ladder = search.width.ladder()
    rule = SequentialRule.of(search)
    table = rungs(trials)
    b = bracket(ladder, table, rule, per_width)
    searched = [t for t in trials if not is_confirmation(t)]
    best = None if b.w_star is None else best_at(searched, b.w_star)
    below_index = b.hi - 1 if b.converged else b.lo
    below = best_at(searched, ladder[below_index]) if below_index >= 0 else None
    steps = sum(int(t.user_attrs.get("member_steps", 0)) for t in trials)
    results = {}
    for width, rung in sorted(table.items()):
        verdict = rung.verdict(rule, per_width)
        results[width] = RungResult(
            width,
            best_at(searched, width),
            rule.confirmed(rung.confirm_values) if rung.confirm_values else None,
            verdict,
            verdict is not None and rung.rejected_by_search(rule),
            rung.confirm_member_steps,
            rung.confirm_seeds,
            rung.confirm_values,
        )
    return Finding(kind, loss, b, best, below, len(searched), steps, results)


def findings(config: StudyConfig, studies: dict[str, optuna.Study]) -> dict[str, Finding]:
    names = config.loss_names()
    return {
        kind: find(config, kind, names[kind], study.get_trials(deepcopy=False))
        for kind, study in studies.items()
    }


# study.nc's per-trial columns and their types; strings are variable-length NetCDF strings.
COLUMNS: dict[str, Any] = {
    "kind": object,
    "number": np.int64,
    "state": object,
    "width": float,
    "amplitude": float,
    "period": float,
    "value": float,
    "last_intermediate": float,
    "measured_step": np.int64,
    "member_steps": np.int64,
    "verdict": object,
    "retry_of": np.int64,
    "fail_reason": object,
    "trace": object,
}
PER_SEED = ("seed_values", "val_accuracy", "train_accuracy", "val_loss")


def _row(kind: str, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    width = trial_width(trial)
    last = None if trial.last_step is None else trial.intermediate_values[trial.last_step]
    return {
        "kind": kind,
        "number": trial.number,
        "state": trial.state.name,
        "width": np.nan if width is None else width,
        "amplitude": trial.params.get("amplitude", 1.0 if kind == "static" else np.nan),
        "period": trial.params.get("period", np.nan),
        "value": np.nan if trial.value is None else trial.value,
        "last_intermediate": np.nan if last is None else last,
        "measured_step": attrs.get("measured_step", -1),
        "member_steps": attrs.get("member_steps", 0),
        "verdict": attrs.get("verdict") or "",
        "retry_of": attrs.get(RETRY_OF, -1),
        "fail_reason": str(trial.system_attrs.get(FAILED_ATTR, "")),
        "trace": attrs.get("trace", ""),
    }


def _seed_values(trial: FrozenTrial, key: str, n_seeds: int) -> list[float]:
    values = trial.user_attrs.get(key) or [None] * n_seeds
    return [np.nan if v is None else float(v) for v in values]


def study_dataset(
    config: StudyConfig, studies: dict[str, optuna.Study], found: dict[str, Finding]
) -> xr.Dataset:
    """One entry per search trial of both studies (parameters, state, per-seed and mean
    metrics) and one per rung tried (its confirmation and verdict, :func:`rung_dataset`)."""
    trials = [
        (kind, t)
        for kind, study in studies.items()
        for t in study.get_trials(deepcopy=False)
        if not is_confirmation(t)
    ]
    seeds = config.search.trial_seeds()
    rows = [_row(kind, t) for kind, t in trials]
    data: dict[str, Any] = {
        key: ("trial", np.array([r[key] for r in rows], dtype=dtype))
        for key, dtype in COLUMNS.items()
    }
    for key in PER_SEED:
        values = [_seed_values(t, key, len(seeds)) for _, t in trials]
        data[key] = (
            ("trial", "seed"),
            np.array(values, dtype=float).reshape(len(trials), len(seeds)),
        )
    diverged = np.zeros((len(trials), len(seeds)), dtype=bool)
    for i, (_, t) in enumerate(trials):
        diverged[i, t.user_attrs.get("diverged_seeds", [])] = True
    data["diverged"] = (("trial", "seed"), diverged)
    finite = np.isfinite(data["seed_values"][1])
    data["sem"] = (
        "trial",
        np.array(
            [
                sem(list(row[ok])) if ok.any() else np.nan
                for row, ok in zip(data["seed_values"][1], finite, strict=True)
            ]
        ),
    )
    ds = xr.Dataset(data, coords={"trial": np.arange(len(trials)), "seed": np.array(seeds)})
    ds = ds.merge(rung_dataset(config, found))
    ds["value"].attrs["long_name"] = f"seed-mean {config.search.metric} at measured_step"
    ds["sem"].attrs["long_name"] = "standard error of the seed mean"
    ds["seed_values"].attrs["long_name"] = f"{config.search.metric} per seed (diverged: 0)"
    ds.attrs.update(
        {
            "title": f"dlf-study minimal-width study {config.name!r}",
            "target": config.search.target,
            "metric": config.search.metric,
            "ladder": np.array(config.search.width.ladder(), dtype=np.int64),
            "seed_offset": config.search.seed_offset,
            "confirm_level": config.search.confirm_level,
            "confirm_per_look_level": SequentialRule.of(config.search).per_look,
            "confirm_rounds": np.array(_round_sizes(config), dtype=np.int64),
            "config": json.dumps(
                {
                    **config.run.model_dump(mode="json"),
                    "search": {
                        **config.search.model_dump(mode="json"),
                        "storage": config.search.storage and redact(config.search.storage),
                    },
                }
            ),
        }
    )
    for kind, f in found.items():
        ds.attrs[f"{kind}_loss"] = f.loss
        ds.attrs[f"{kind}_converged"] = int(f.bracket.converged)
        ds.attrs[f"{kind}_w_star"] = -1 if f.w_star is None else f.w_star
        ds.attrs[f"{kind}_member_steps"] = f.member_steps
        ds.attrs[f"{kind}_answer"] = f.sentence(config.search.target, config.search.metric)
        for name, best in (("best", f.best), ("below", f.below)):
            if best is not None:
                for key in ("width", "number", "amplitude", "period", "value", "sem", "trials"):
                    ds.attrs[f"{kind}_{name}_{key}"] = getattr(best, key)
    return ds


def _round_sizes(config: StudyConfig) -> list[int]:
    """Seeds after each possible confirmation round: e.g. [20, 40, 60, 80]."""
    rule, sizes = SequentialRule.of(config.search), list[int]()
    while not sizes or sizes[-1] < rule.cap:
        sizes.append(rule.next_round(sizes[-1] if sizes else 0).stop)
    return sizes


# study.nc's per-rung columns: the search's pick at the rung, its confirmation, the verdict.
RUNG_COLUMNS: dict[str, Any] = {
    "rung_kind": object,
    "rung_width": np.int64,
    "rung_verdict": object,
    "rung_decided_on": object,
    "search_number": np.int64,
    "search_amplitude": float,
    "search_period": float,
    "search_value": float,
    "search_sem": float,
    "search_trials": np.int64,
    "confirm_n": np.int64,
    "confirm_mean": float,
    "confirm_sem": float,
    "confirm_lower": float,
    "confirm_upper": float,
    "p_reach": float,
    "reach_fraction": float,
    "reach_fraction_low": float,
    "reach_fraction_high": float,
    "confirm_member_steps": np.int64,
}


def _rung_row(kind: str, r: RungResult) -> dict[str, Any]:
    s, c = r.search, r.confirmed
    decided_on = "" if r.verdict is None else ("search seeds" if r.by_search else "fresh seeds")
    nan = np.nan
    return {
        "rung_kind": kind,
        "rung_width": r.width,
        "rung_verdict": r.verdict or "",
        "rung_decided_on": decided_on,
        "search_number": -1 if s is None else s.number,
        "search_amplitude": nan if s is None else s.amplitude,
        "search_period": nan if s is None else s.period,
        "search_value": nan if s is None else s.value,
        "search_sem": nan if s is None else s.sem,
        "search_trials": 0 if s is None else s.trials,
        "confirm_n": 0 if c is None else c.n,
        "confirm_mean": nan if c is None else c.mean,
        "confirm_sem": nan if c is None else c.sem,
        "confirm_lower": nan if c is None else c.lower,
        "confirm_upper": nan if c is None else c.upper,
        "p_reach": nan if c is None else c.p_reach,
        "reach_fraction": nan if c is None else c.fraction,
        "reach_fraction_low": nan if c is None else c.fraction_low,
        "reach_fraction_high": nan if c is None else c.fraction_high,
        "confirm_member_steps": r.member_steps,
    }


def rung_dataset(config: StudyConfig, found: dict[str, Finding]) -> xr.Dataset:
    """One entry per (track, width) tried, and each rung's metric per confirmation seed
    (``confirm_seed``: the fresh seeds, NaN where a rung did not use that seed)."""
    results = [(kind, r) for kind, f in found.items() for r in f.rungs.values()]
    rows = [_rung_row(kind, r) for kind, r in results]
    data: dict[str, Any] = {
        key: ("rung", np.array([row[key] for row in rows], dtype=dtype))
        for key, dtype in RUNG_COLUMNS.items()
    }
    seeds = sorted({seed for _, r in results for seed in r.confirm_seeds})
    values = np.full((len(rows), len(seeds)), np.nan)
    for i, (_, r) in enumerate(results):
        for seed, value in zip(r.confirm_seeds, r.confirm_values, strict=True):
            values[i, seeds.index(seed)] = value
    data["confirm_values"] = (("rung", "confirm_seed"), values)
    ds = xr.Dataset(data, coords={"rung": np.arange(len(rows)), "confirm_seed": seeds})
    ds["confirm_values"].attrs["long_name"] = f"{config.search.metric} per fresh seed"
    ds["p_reach"].attrs["long_name"] = "probability that the rung's true mean is at the target"
    return ds


def write_study(ds: xr.Dataset, directory: Path) -> Path:
    path = Path(directory) / STUDY_FILE
    write_netcdf(ds, path)
    return path


def open_study(path: str | Path) -> xr.Dataset:
    """Open a study's ``study.nc`` (or the study folder holding it), loaded into memory."""
    path = Path(path)
    return open_netcdf(path / STUDY_FILE if path.is_dir() else path)


def is_study(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a study's ``study.nc`` (by its content, whatever the file's name)."""
    return {"kind", "state"} <= set(ds.variables) and "target" in ds.attrs


def study_summary(ds: xr.Dataset, path: Path) -> str:
    """``dlf-study show`` for a study: the answer per track, as its ``study.nc`` (``ds``, read
    from ``path``) records it."""
    target, metric = ds.attrs.get("target"), ds.attrs.get("metric")
    lines = [f"study {path}", f"  {ds.attrs.get('title', '')}: target {metric} >= {target}"]
    for kind in ("dynamical", "static"):
        if f"{kind}_loss" not in ds.attrs:
            continue
        rows = ds["kind"].values == kind
        states = ds["state"].values[rows]
        w_star = int(ds.attrs[f"{kind}_w_star"])
        answer = (
            "not converged"
            if not ds.attrs[f"{kind}_converged"]
            else ("beyond the ladder" if w_star < 0 else f"w* = {w_star}")
        )
        lines.append(
            f"  {kind} ({ds.attrs[f'{kind}_loss']}): {answer}; {rows.sum()} trials "
            f"({(states == 'COMPLETE').sum()} complete, {(states == 'PRUNED').sum()} pruned), "
            f"{int(ds.attrs[f'{kind}_member_steps']):,} member-steps"
        )
        if f"{kind}_answer" in ds.attrs:
            lines.append(f"    answer: {ds.attrs[f'{kind}_answer']}")
        for name, label in (("best", "search at w*"), ("below", "search, rung below")):
            if f"{kind}_{name}_value" in ds.attrs:
                a = {k: ds.attrs[f"{kind}_{name}_{k}"] for k in ("width", "value", "sem", "trials")}
                at = f"A = {ds.attrs[f'{kind}_{name}_amplitude']:.3g}, "
                at += f"T = {ds.attrs[f'{kind}_{name}_period']:.3g}, "
                lines.append(
                    f"    {label}: width {a['width']}, {a['value']:.3f} ± {a['sem']:.3f} "
                    f"({at if kind == 'dynamical' else ''}best of {a['trials']})"
                )
    return "\n".join(lines)
