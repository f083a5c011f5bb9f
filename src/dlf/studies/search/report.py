"""``report.md`` of a study: the answer, how sure it is, the figures
(:mod:`~dlf.studies.search.figures`) and a table of the trials."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dlf.config import validate
from dlf.hooks.manager import load_plugins
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import SequentialRule
from dlf.studies.search.figures import WIDTH_FIGURE, schedule_figure, width_figure
from dlf.studies.search.findings import Finding

REPORT_NAME = "report.md"


def _trials_frame(ds: xr.Dataset) -> pd.DataFrame:
    columns = [
        "kind",
        "number",
        "state",
        "width",
        "amplitude",
        "period",
        "value",
        "sem",
        "last_intermediate",
        "measured_step",
        "verdict",
        "member_steps",
        "retry_of",
        "fail_reason",
    ]
    frame = ds[columns].to_dataframe().reset_index(drop=True)
    frame["shown"] = frame["value"].fillna(frame["last_intermediate"])
    return frame


def _rungs_frame(ds: xr.Dataset) -> pd.DataFrame:
    return ds[[name for name in ds.data_vars if ds[name].dims == ("rung",)]].to_dataframe()


def _num(x: float, fmt: str) -> str:
    return "" if not np.isfinite(x) else format(x, fmt)


def _table(frame: pd.DataFrame, knob: str = "width") -> list[str]:
    lines = [
        f"| study | # | state | {knob} | A | T | value | ± sem | measured at step | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ordered = frame.sort_values("number")
    retried = {  # the trial first asked → its latest retry
        int(first): int(number)
        for first, number in zip(ordered["retry_of"], ordered["number"], strict=True)
        if first >= 0
    }
    for row in frame.sort_values(["kind", "width", "number"]).itertuples():
        lines.append(
            f"| {row.kind} | {row.number} | {row.state} | {_num(row.width, '.0f')} | "
            f"{_num(row.amplitude, '.3g')} | {_num(row.period, '.3g')} | "
            f"{_num(row.value, '.3f')} | {_num(row.sem, '.3f')} | "
            f"{row.measured_step if row.measured_step >= 0 else ''} | {_verdict(row, retried)} |"
        )
    return lines


def _verdict(row: Any, retried: dict[int, int]) -> str:
    """The verdict column: the pruner's verdict, or for a failed trial why, and its retry."""
    if row.state != "FAIL":
        return str(row.verdict)
    why = f"failed: {row.fail_reason or 'no reason recorded'}"
    first = row.retry_of if row.retry_of >= 0 else row.number
    again = retried.get(first)
    return why + (
        f"; run again as trial {again}" if again is not None and again != row.number else ""
    )


def _rung_table(rungs: pd.DataFrame, level: float, knob: str = "width") -> list[str]:
    """Per rung tried: the search's pick, its confirmation and the verdict."""
    lines = [
        f"| study | {knob} | search pick: A, T | search mean ± sem (best of) | confirmed mean "
        f"± sem | fresh seeds | P(reach) | seeds reaching ({level:.0%} interval) | verdict |",
        "|---|---:|---|---|---|---:|---:|---|---|",
    ]
    for r in rungs.sort_values(["rung_kind", "rung_width"]).itertuples():
        pick = "" if r.rung_kind == "static" else f"{_num(r.search_amplitude, '.3g')}, "
        pick += "" if r.rung_kind == "static" else _num(r.search_period, ".3g")
        searched = f"{_num(r.search_value, '.3f')} ± {_num(r.search_sem, '.3f')}"
        searched += f" ({r.search_trials})" if np.isfinite(r.search_value) else ""
        confirmed, fraction = "", ""
        if r.confirm_n:
            confirmed = f"{r.confirm_mean:.3f} ± {r.confirm_sem:.3f}"
            fraction = (
                f"{r.reach_fraction:.2f} [{r.reach_fraction_low:.2f}, {r.reach_fraction_high:.2f}]"
            )
        verdict = r.rung_verdict or "undecided"
        verdict += " (on the search seeds)" if r.rung_decided_on == "search seeds" else ""
        lines.append(
            f"| {r.rung_kind} | {r.rung_width} | {pick} | {searched} | {confirmed} | "
            f"{r.confirm_n} | {_num(r.p_reach, '.2f')} | {fraction} | {verdict} |"
        )
    return lines


def _validation_set(config: StudyConfig) -> tuple[int, str | None]:
    """How many points the validation set has (built as the runs build it), and the random
    stream its points were drawn with (``data.draw``, where the data set has one)."""
    entry = load_plugins(config.run.plugins).registries.datasets.get(config.run.data.name, "data")
    options = validate(entry.options, config.run.data.options, prefix="data")
    return len(entry.build(options).y_val), getattr(options, "draw", None)


def _how_sure(config: StudyConfig) -> list[str]:
    """The decision rule, the seeds it used, and what the ± leaves out."""
    search = config.search
    rule = SequentialRule.of(search)
    n_val, draw = _validation_set(config)
    p = search.target
    other = {"authors": "default_rng", "default_rng": "authors"}.get(draw or "", "")
    data = (
        ""
        if draw is None
        else f" The points are drawn with `data.draw: {draw}`; the same seeds give other point "
        f"sets with `data.draw: {other}`, and the answer can move a rung with the draw (rerun "
        f"with `--set data.draw={other}` under another `name` to see by how much)."
    )
    return [
        "## How sure",
        "",
        f"A width's (A, T) is chosen on the search seeds {search.trial_seeds()}; whether the width "
        f"reaches the target is decided on fresh seeds from {search.confirm_seed(0)} on, never "
        f"used for the choice: {rule.first} first, then {rule.step} more at a time while the "
        f"interval still contains the target, at most {rule.cap}. A verdict comes from a "
        f"one-sided t interval on the confirmed seed-mean at {rule.per_look:.2%} per look "
        f"(Bonferroni over the {rule.looks} possible looks, so a *reaches* or *does not "
        f"reach* call errs with probability at most {1 - rule.level:.0%}); *within noise* means "
        "the target was still inside after the last look. A rung whose search pick is clearly "
        "below the target even on its own seeds is called *does not reach* there (selection "
        "only biases upwards). P(reach) is the probability, given the fresh seeds (t "
        "posterior, flat prior), that the rung's true mean is at the target; outcomes are "
        "often bimodal (a seed learns the task or not), so the fraction of seeds reaching the "
        "target is given beside it (Clopper-Pearson interval).",
        "",
        f"The ± is over seeds only. Every seed is scored on the same {n_val} validation points, "
        f"so an accuracy near {p:g} also carries the validation draw's own sampling error, "
        f"≈ {math.sqrt(p * (1 - p) / n_val):.3f} (binomial, {n_val} points), shared by all "
        f"seeds and not in the ±; another `data.val_seed` may move the answer by about that."
        + data,
        "",
    ]


def _comparison(found: dict[str, Finding]) -> list[str]:
    """The one-line comparison of the two tracks, with their evidence."""
    dyn, static = found.get("dynamical"), found.get("static")
    if dyn is None or static is None or not (dyn.bracket.converged and static.bracket.converged):
        return []

    def side(f: Finding, name: str) -> str:
        if f.w_star is None:
            return f"{name} not confirmed up to width {f.bracket.ladder[-1]}"
        c = f.rungs[f.w_star].confirmed
        noise = [w for w, r in f.rungs.items() if r.verdict == "within noise" and w < f.w_star]
        text = f"{name} = {f.w_star} ({c.mean:.3f} ± {c.sem:.3f}, {c.n} fresh seeds)" if c else ""
        if noise:
            text += f", with {', '.join(map(str, sorted(noise)))} within noise"
        return text

    return [
        "",
        f"**{side(dyn, 'w*_dyn')} versus {side(static, 'w*_static')}.**",
    ]


def write_report(
    config: StudyConfig, ds: xr.Dataset, found: dict[str, Finding], storage: str, directory: Path
) -> Path:
    """Write report.md and its figures into ``directory``; returns the report's path."""
    search = config.search
    frame = _trials_frame(ds)
    rungs = _rungs_frame(ds)
    width_figure(frame, rungs, found, config, directory / WIDTH_FIGURE)
    dyn = found.get("dynamical")
    lines = [
        *_question(config),
        "## Answer",
        "",
        *[f"- {f.sentence(search.target, search.metric)}." for f in found.values()],
        *_comparison(found),
        "",
        *_how_sure(config),
        *_rung_table(rungs, 2 * SequentialRule.of(search).per_look - 1, config.knob.option),
        "",
        "## Figures",
        "",
        f"![{search.metric} versus {config.knob.option}]({WIDTH_FIGURE})",
        "",
    ]
    if dyn is not None and dyn.w_star is not None:
        lines += [schedule_figure(ds, dyn.w_star, search.target, directory), ""]
    lines += [*_trials_section(config, found, frame), *_looking_further(storage)]
    path = directory / REPORT_NAME
    path.write_text("\n".join(lines))
    return path


def _question(config: StudyConfig) -> list[str]:
    """The report's title and the question it answers, with the searched box and ladder."""
    search, run, knob = config.search, config.run, config.knob
    size = "hidden width" if knob.is_mlp_width else f"`{knob.field}` of `{run.model.name}`"
    return [
        f"# Minimal width study `{config.name}`",
        "",
        f"Question: the smallest {size} at which `{run.loss.name}` reaches a seed-mean "
        f"{search.metric} of at least **{search.target:g}** ({run.train.steps} steps, "
        f"η = {run.train.lr[0]:g}, Γ static for the last period), for some amplitude A in "
        f"[{search.amplitude.low:g}, {search.amplitude.high:g}] and period T in "
        f"[{search.period.low:g}, {search.period.high:g}]; "
        f"{'widths' if knob.is_mlp_width else knob.option} {search.width.ladder()}.",
        "",
    ]


def _trials_section(
    config: StudyConfig, found: dict[str, Finding], frame: pd.DataFrame
) -> list[str]:
    """The cost per track, how to read the trial table, and the table."""
    search, run = config.search, config.run
    cost = ", ".join(
        f"{f.kind}: {f.trials} search trials, {f.member_steps:,} member-steps with confirmation"
        for f in found.values()
    )
    return [
        "## Trials",
        "",
        f"Cost: {cost}. The table lists the search trials (seeds {search.trial_seeds()}); the "
        "confirmation rounds are trials of the same Optuna studies with user attribute "
        "`role: confirm`. A trial's value is the seed mean at its last evaluation (`measured "
        f"at step` < {run.train.steps} when its run stopped early because every trial in it "
        "was decided; PRUNED trials were hopeless there). `verdict` is the pruner's call in "
        "training, also kept when the run went on because another of its trials was undecided. "
        "Traces: `runs/` (each trial's user attribute `trace`). Data: "
        '`dlf.open_study("study.nc")`.',
        "",
        *_table(frame, config.knob.option),
        "",
    ]


def _looking_further(storage: str) -> list[str]:
    return [
        "## Looking further",
        "",
        f"Optuna storage: `{storage}`. Browse it with `optuna-dashboard {storage}`"
        " (`pip install dlf-study[dashboard]`).",
        "",
    ]
