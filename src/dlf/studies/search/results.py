"""``study.nc``: one entry per search trial and one per rung tried, with the answer (w*, best A
and T, from :mod:`~dlf.studies.search.findings`) in its attributes.

``study.nc`` has a ``trial`` dimension over the trials of both Optuna studies (``kind`` says
which) and a ``seed`` dimension for per-seed metrics. It is plain NetCDF: ``xarray.open_dataset``
reads it; :func:`open_study` is the same, loaded into memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import xarray as xr
from optuna.trial import FrozenTrial

from dlf.engine.trace import open_netcdf, write_netcdf
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import SequentialRule, is_confirmation
from dlf.studies.search.findings import Finding, RungResult, sem
from dlf.studies.search.ladder import trial_width
from dlf.studies.search.liveness import FAILED_ATTR, RETRY_OF
from dlf.studies.search.storage import redact

STUDY_FILE = "study.nc"


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
    ds = trials_dataset(config, trials).merge(rung_dataset(config, found))
    knob = config.knob
    ds["width"].attrs.update({"long_name": knob.label, "option": knob.field})
    ds["value"].attrs["long_name"] = f"seed-mean {config.search.metric} at measured_step"
    ds["sem"].attrs["long_name"] = "standard error of the seed mean"
    ds["seed_values"].attrs["long_name"] = f"{config.search.metric} per seed (diverged: 0)"
    ds.attrs.update(_setup_attrs(config))
    ds.attrs.update(_answer_attrs(config, found))
    return ds


def trials_dataset(config: StudyConfig, trials: list[tuple[str, FrozenTrial]]) -> xr.Dataset:
    """The ``trial`` entries: :data:`COLUMNS`, the :data:`PER_SEED` metrics and which seeds
    diverged (``(trial, seed)``), and each trial's standard error over its finite seeds."""
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
    per_seed = data["seed_values"][1]
    data["sem"] = ("trial", np.array([_finite_sem(row) for row in per_seed]))
    return xr.Dataset(data, coords={"trial": np.arange(len(trials)), "seed": np.array(seeds)})


def _finite_sem(row: np.ndarray) -> float:
    finite = row[np.isfinite(row)]
    return sem(list(finite)) if finite.size else np.nan


def _setup_attrs(config: StudyConfig) -> dict[str, Any]:
    """What the study asked and how it decides: target, ladder (and the option it sets),
    seeds, confirmation rule and the whole config (storage password hidden)."""
    search = config.search
    return {
        "title": f"dlf-study minimal-width study {config.name!r}",
        "target": search.target,
        "metric": search.metric,
        "ladder": np.array(search.width.ladder(), dtype=np.int64),
        "width_option": config.knob.field,
        "model": config.run.model.name,
        "seed_offset": search.seed_offset,
        "confirm_level": search.confirm_level,
        "confirm_per_look_level": SequentialRule.of(search).per_look,
        "confirm_rounds": np.array(_round_sizes(config), dtype=np.int64),
        "config": json.dumps(
            {
                **config.run.model_dump(mode="json"),
                "search": {
                    **search.model_dump(mode="json"),
                    "storage": search.storage and redact(search.storage),
                },
            }
        ),
    }


def _answer_attrs(config: StudyConfig, found: dict[str, Finding]) -> dict[str, Any]:
    """Per track: its loss, whether it converged, w*, its cost, the answer in words, and the
    best trials at w* and the rung below (``<kind>_best_…``, ``<kind>_below_…``)."""
    attrs: dict[str, Any] = {}
    for kind, f in found.items():
        attrs[f"{kind}_loss"] = f.loss
        attrs[f"{kind}_converged"] = int(f.bracket.converged)
        attrs[f"{kind}_w_star"] = -1 if f.w_star is None else f.w_star
        attrs[f"{kind}_member_steps"] = f.member_steps
        attrs[f"{kind}_answer"] = f.sentence(config.search.target, config.search.metric)
        for name, best in (("best", f.best), ("below", f.below)):
            if best is not None:
                for key in ("width", "number", "amplitude", "period", "value", "sem", "trials"):
                    attrs[f"{kind}_{name}_{key}"] = getattr(best, key)
    return attrs


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
