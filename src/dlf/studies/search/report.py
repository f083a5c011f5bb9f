"""``report.md`` of a study: the answer, the figures (seaborn PNGs) and a table of the trials.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, so writing a report never
touches the pyplot backend of a notebook that imports this module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator, ScalarFormatter
from matplotlib.transforms import blended_transform_factory

from dlf.config import validate
from dlf.engine.trace import open_trace
from dlf.hooks.manager import load_plugins
from dlf.plots.curves import Trial, trial_curves
from dlf.plots.style import legend_outside, loss_color, new_figure, styled
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import SequentialRule
from dlf.studies.search.results import Finding

REPORT_NAME = "report.md"
WIDTH_FIGURE = "accuracy_vs_width.png"
SCHEDULE_FIGURE = "curves_at_w_star.png"


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


def _log_width_axis(ax: Axes, widths: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(widths)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


VERDICT_MARKS = {"reaches": "✓", "does not reach": "✗", "within noise": "≈"}


def _rungs_frame(ds: xr.Dataset) -> pd.DataFrame:
    return ds[[name for name in ds.data_vars if ds[name].dims == ("rung",)]].to_dataframe()


def _verdict_rows(ax: Axes, rungs: pd.DataFrame, found: dict[str, Finding]) -> None:
    """Each rung's verdict as a mark in one row per track above the data (room made on top)."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.18 * (high - low))
    place = blended_transform_factory(ax.transData, ax.transAxes)
    for row, kind in enumerate(found):
        at = rungs[rungs["rung_kind"] == kind]
        for r in at.itertuples():
            mark = VERDICT_MARKS.get(r.rung_verdict, "?")
            ax.text(
                r.rung_width * 1.04,
                0.96 - 0.06 * row,
                mark,
                transform=place,
                ha="center",
                va="top",
                color=loss_color(found[kind].loss),
                fontsize=11,
            )


@styled
def width_figure(
    frame: pd.DataFrame,
    rungs: pd.DataFrame,
    found: dict[str, Finding],
    config: StudyConfig,
    path: Path,
) -> None:
    """Per track and rung tried: the search's pick (best trial on the search seeds, hollow)
    and its confirmation on fresh seeds (filled), each mean ± standard error, the verdict
    above the confirmed point, every trial faint behind, and the target line; in the shared
    style of ``dlf-study plot`` (one colour per loss, legend outside the data)."""
    search, run = config.search, config.run
    target, metric = search.target, search.metric
    fig, axes = new_figure(size=(9.0, 4.6))
    ax = axes[0, 0]
    done = frame[frame["state"].isin(["COMPLETE", "PRUNED"])]
    widths = list(done["width"]) + list(rungs["rung_width"])
    for kind, f in found.items():
        colour = loss_color(f.loss)
        trials = done[done["kind"] == kind]
        ax.scatter(trials["width"], trials["shown"], s=10, color=colour, alpha=0.2, linewidths=0)
        at = rungs[rungs["rung_kind"] == kind].sort_values("rung_width")
        w = at["rung_width"].to_numpy(dtype=float)
        ax.errorbar(
            w / 1.04,
            at["search_value"],
            yerr=at["search_sem"],
            fmt="o",
            mfc="white",
            color=colour,
            capsize=2,
            label=f"{f.loss}: search pick (search seeds)",
        )
        ax.errorbar(
            w * 1.04,
            at["confirm_mean"],
            yerr=at["confirm_sem"],
            fmt="s-",
            color=colour,
            capsize=2,
            label=f"{f.loss}: confirmed (fresh seeds)",
        )
    if widths:
        _log_width_axis(ax, widths)
    _verdict_rows(ax, rungs, found)
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("hidden width (units)")
    ax.set_ylabel(f"{metric} (mean ± s.e. over seeds)")
    lr = run.train.lr[0]
    fig.suptitle(
        f"Minimal width for {metric} ≥ {target:g}: {run.data.name}, {run.train.steps} steps, "
        f"η = {lr:g}\nverdict on fresh seeds above each rung: ✓ reaches, ✗ does not reach, "
        "≈ within noise"
    )
    legend_outside(ax)
    fig.savefig(path, dpi=120)


def schedule_figure(ds: xr.Dataset, w_star: int, target: float, directory: Path) -> str:
    """Draw the best dynamical trial at w* against the static loss at the same width (train and
    validation accuracy, Γ; seed mean ± sem) from the trials' traces; returns the report's
    line: the figure, or why it could not be drawn."""
    trials = []
    for kind in ("dynamical", "static"):
        done = (ds["kind"] == kind) & (ds["width"] == w_star) & (ds["state"] == "COMPLETE")
        if not done.any():
            continue
        best = ds.isel(trial=int(np.nanargmax(ds["value"].where(done).values)))
        path = directory / str(best["trace"].values)
        if not path.is_file():
            return f"(No training curves at w*: {path.name}, the trace of a trial there, is gone.)"
        trace = open_trace(path)
        same = (trace["amplitude"] == best["amplitude"]) & (trace["period"] == best["period"])
        if kind == "static":  # its period is not a parameter (NaN in study.nc)
            same = trace["amplitude"] == 1
        loss = str(ds.attrs.get(f"{kind}_loss", kind)).upper()
        label = f"{loss} A = {float(best['amplitude']):.3g}, T = {float(best['period']):.3g}"
        trials.append(
            Trial(
                label if kind == "dynamical" else loss,
                loss,
                trace.isel(member=np.flatnonzero(same.values)),
            )
        )
    missing = "" if len(trials) == 2 else " (the static search completed no trial at w*)"
    config = json.loads(ds.attrs["config"])
    title = (
        f"At w* = {w_star}: the best dynamical trial (selected, so optimistic) against the "
        f"static loss{missing}\n{config['data']['name']}, {config['train']['steps']} steps, "
        f"η = {np.atleast_1d(config['train']['lr'])[0]:g}, mean ± sem over seeds"
    )
    trial_curves(trials, title, target).savefig(directory / SCHEDULE_FIGURE, dpi=110)
    return f"![training curves at w*]({SCHEDULE_FIGURE})"


def _num(x: float, fmt: str) -> str:
    return "" if not np.isfinite(x) else format(x, fmt)


def _table(frame: pd.DataFrame) -> list[str]:
    lines = [
        "| study | # | state | width | A | T | value | ± sem | measured at step | verdict |",
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


def _rung_table(rungs: pd.DataFrame, level: float) -> list[str]:
    """Per rung tried: the search's pick, its confirmation and the verdict."""
    lines = [
        "| study | width | search pick: A, T | search mean ± sem (best of) | confirmed mean ± sem "
        f"| fresh seeds | P(reach) | seeds reaching ({level:.0%} interval) | verdict |",
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
    search, run = config.search, config.run
    frame = _trials_frame(ds)
    rungs = _rungs_frame(ds)
    width_figure(frame, rungs, found, config, directory / WIDTH_FIGURE)
    dyn = found.get("dynamical")
    lines = [
        f"# Minimal width study `{config.name}`",
        "",
        f"Question: the smallest hidden width at which `{run.loss.name}` reaches a seed-mean "
        f"{search.metric} of at least **{search.target:g}** ({run.train.steps} steps, "
        f"η = {run.train.lr[0]:g}, Γ static for the last period), for some amplitude A in "
        f"[{search.amplitude.low:g}, {search.amplitude.high:g}] and period T in "
        f"[{search.period.low:g}, {search.period.high:g}]; widths {search.width.ladder()}.",
        "",
        "## Answer",
        "",
        *[f"- {f.sentence(search.target, search.metric)}." for f in found.values()],
        *_comparison(found),
        "",
        *_how_sure(config),
        *_rung_table(rungs, 2 * SequentialRule.of(search).per_look - 1),
        "",
        "## Figures",
        "",
        f"![{search.metric} versus width]({WIDTH_FIGURE})",
        "",
    ]
    if dyn is not None and dyn.w_star is not None:
        lines += [schedule_figure(ds, dyn.w_star, search.target, directory), ""]
    cost = ", ".join(
        f"{f.kind}: {f.trials} search trials, {f.member_steps:,} member-steps with confirmation"
        for f in found.values()
    )
    lines += [
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
        *_table(frame),
        "",
        "## Looking further",
        "",
        f"Optuna storage: `{storage}`. Browse it with `optuna-dashboard {storage}`"
        " (`pip install dlf-study[dashboard]`).",
        "",
    ]
    path = directory / REPORT_NAME
    path.write_text("\n".join(lines))
    return path
