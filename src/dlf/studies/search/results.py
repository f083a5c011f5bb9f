"""What a study found: the answer (w*, best A and T) and ``study.nc`` with one entry per trial.

``study.nc`` has a ``trial`` dimension over the trials of both Optuna studies (``kind`` says
which) and a ``seed`` dimension for per-seed metrics. It is plain NetCDF: ``xarray.open_dataset``
reads it; :func:`open_study` is the same, loaded into memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import xarray as xr
from optuna.trial import FrozenTrial, TrialState

from dlf.engine.trace import open_netcdf, write_netcdf
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.ladder import FINISHED, Bracket, bracket, rungs, trial_width
from dlf.studies.search.liveness import RETRY_OF
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
class Finding:
    """One track's answer: the bracket on w*, the best trial at w* and at the rung below it."""

    kind: str
    loss: str
    bracket: Bracket
    best: Best | None  # at w*
    below: Best | None  # at the rung just below w* (or the widest rung, if none reaches)
    trials: int
    member_steps: int

    @property
    def w_star(self) -> int | None:
        return self.bracket.w_star

    def sentence(self, target: float, metric: str) -> str:
        dynamical = self.kind == "dynamical"
        below = (
            ""
            if self.below is None
            else (f"; at width {self.below.width}: {self.below.describe(dynamical)}")
        )
        if self.bracket.converged and self.w_star is None:
            widest = self.bracket.ladder[-1]
            return f"{self.loss} does not reach {metric} {target:g} up to width {widest}{below}"
        if not self.bracket.converged:
            return f"{self.loss}: not converged yet, {self.bracket.describe()}"
        text = f"{self.loss} reaches {metric} ≥ {target:g} at width w* = {self.w_star}"
        if self.best is not None:
            text += f" ({self.best.describe(dynamical)})"
        return text + below


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
    b = bracket(ladder, rungs(trials), search.target, per_width)
    best = None if b.w_star is None else best_at(trials, b.w_star)
    below_index = b.hi - 1 if b.converged else b.lo
    below = best_at(trials, ladder[below_index]) if below_index >= 0 else None
    steps = sum(int(t.user_attrs.get("member_steps", 0)) for t in trials)
    return Finding(kind, loss, b, best, below, len(trials), steps)


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
        "trace": attrs.get("trace", ""),
    }


def _seed_values(trial: FrozenTrial, key: str, n_seeds: int) -> list[float]:
    values = trial.user_attrs.get(key) or [None] * n_seeds
    return [np.nan if v is None else float(v) for v in values]


def study_dataset(
    config: StudyConfig, studies: dict[str, optuna.Study], found: dict[str, Finding]
) -> xr.Dataset:
    """One entry per trial of both studies: parameters, state, per-seed and mean metrics."""
    trials = [
        (kind, t) for kind, study in studies.items() for t in study.get_trials(deepcopy=False)
    ]
    seeds = config.search.seeds
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
    ds["value"].attrs["long_name"] = f"seed-mean {config.search.metric} at measured_step"
    ds["sem"].attrs["long_name"] = "standard error of the seed mean"
    ds["seed_values"].attrs["long_name"] = f"{config.search.metric} per seed (diverged: 0)"
    ds.attrs.update(
        {
            "title": f"dlf-study minimal-width study {config.name!r}",
            "target": config.search.target,
            "metric": config.search.metric,
            "ladder": np.array(config.search.width.ladder(), dtype=np.int64),
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
        for name, best in (("best", f.best), ("below", f.below)):
            if best is not None:
                for key in ("width", "number", "amplitude", "period", "value", "sem", "trials"):
                    ds.attrs[f"{kind}_{name}_{key}"] = getattr(best, key)
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
        for name, label in (("best", "at w*"), ("below", "rung below")):
            if f"{kind}_{name}_value" in ds.attrs:
                a = {k: ds.attrs[f"{kind}_{name}_{k}"] for k in ("width", "value", "sem", "trials")}
                at = f"A = {ds.attrs[f'{kind}_{name}_amplitude']:.3g}, "
                at += f"T = {ds.attrs[f'{kind}_{name}_period']:.3g}, "
                lines.append(
                    f"    {label}: width {a['width']}, {a['value']:.3f} ± {a['sem']:.3f} "
                    f"({at if kind == 'dynamical' else ''}best of {a['trials']})"
                )
    return "\n".join(lines)
