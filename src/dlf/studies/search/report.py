"""``report.md`` of a study: the answer, the figures (seaborn PNGs) and a table of the trials.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, so writing a report never
touches the pyplot backend of a notebook that imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from dlf.engine.trace import open_trace
from dlf.plots.curves import Trial, trial_curves
from dlf.studies.search.config import StudyConfig
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
    ]
    frame = ds[columns].to_dataframe().reset_index(drop=True)
    frame["shown"] = frame["value"].fillna(frame["last_intermediate"])
    return frame


def _log_width_axis(ax: Axes, widths: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(widths)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def width_figure(
    frame: pd.DataFrame, found: dict[str, Finding], target: float, metric: str, path: Path
) -> None:
    """Every measured trial's metric against width, static vs dynamical, with the target line;
    the line joins the best trial at each width."""
    done = frame[frame["state"].isin(["COMPLETE", "PRUNED"])].copy()
    done["loss"] = done["kind"].map({k: f"{f.loss} ({k})" for k, f in found.items()})
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    if not done.empty:
        sns.scatterplot(
            data=done, x="width", y="shown", hue="loss", style="state", alpha=0.6, ax=ax
        )
        best = done.groupby(["loss", "width"], as_index=False)["shown"].max()
        sns.lineplot(data=best, x="width", y="shown", hue="loss", legend=False, ax=ax)
        _log_width_axis(ax, list(done["width"]))
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    for f in found.values():
        if f.w_star is not None:
            ax.axvline(f.w_star, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("hidden width (dotted: w*)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title("every trial; line: best over (A, T) at each width")
    ax.legend(fontsize=8)
    fig.tight_layout()
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


def _table(frame: pd.DataFrame) -> list[str]:
    lines = [
        "| study | # | state | width | A | T | value | ± sem | measured at step | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in frame.sort_values(["kind", "width", "number"]).itertuples():

        def num(x: float, fmt: str) -> str:
            return "" if not np.isfinite(x) else format(x, fmt)

        lines.append(
            f"| {row.kind} | {row.number} | {row.state} | {num(row.width, '.0f')} | "
            f"{num(row.amplitude, '.3g')} | {num(row.period, '.3g')} | {num(row.value, '.3f')} | "
            f"{num(row.sem, '.3f')} | {row.measured_step if row.measured_step >= 0 else ''} | "
            f"{row.verdict} |"
        )
    return lines


def write_report(
    config: StudyConfig, ds: xr.Dataset, found: dict[str, Finding], storage: str, directory: Path
) -> Path:
    """Write report.md and its figures into ``directory``; returns the report's path."""
    search, run = config.search, config.run
    frame = _trials_frame(ds)
    width_figure(frame, found, search.target, search.metric, directory / WIDTH_FIGURE)
    dyn, static = found.get("dynamical"), found.get("static")
    lines = [
        f"# Minimal width study `{config.name}`",
        "",
        f"Question: the smallest hidden width at which `{run.loss.name}` reaches a seed-mean "
        f"{search.metric} of at least **{search.target:g}** (seeds {search.seeds}, "
        f"{run.train.steps} steps, η = {run.train.lr[0]:g}, Γ static for the last period), for "
        f"some amplitude A in [{search.amplitude.low:g}, {search.amplitude.high:g}] and period T "
        f"in [{search.period.low:g}, {search.period.high:g}]; widths {search.width.ladder()}.",
        "",
        "## Answer",
        "",
    ]
    for f in found.values():
        lines.append(f"- {f.sentence(search.target, search.metric)}.")
    if (
        dyn is not None
        and static is not None
        and dyn.w_star is not None
        and static.bracket.converged
    ):
        baseline = "beyond the ladder" if static.w_star is None else f"w*_static = {static.w_star}"
        lines += [
            "",
            f"**The dynamical loss reaches the target at w*_dyn = {dyn.w_star} versus "
            f"{baseline} for the static loss.**",
        ]
    lines += [
        "",
        f"At each width the dynamical loss had up to {search.trials_per_width} (A, T) trials and "
        "the static loss one, and w* keeps the best: the best of several noisy means is biased "
        "upwards. To confirm w*_dyn, train that width at the best (A, T) on other seeds (a run "
        "config with `model.width`, `schedule.amplitude`, `schedule.period`, `train.seeds`).",
        "",
        "## Figures",
        "",
        f"![{search.metric} versus width]({WIDTH_FIGURE})",
        "",
    ]
    if dyn is not None and dyn.w_star is not None:
        lines += [schedule_figure(ds, dyn.w_star, search.target, directory), ""]
    cost = ", ".join(
        f"{f.kind}: {f.trials} trials, {f.member_steps:,} member-steps" for f in found.values()
    )
    lines += [
        "## Trials",
        "",
        f"Cost: {cost}. A trial's value is the seed mean at its last evaluation (`measured at "
        f"step` < {run.train.steps} when its run stopped early because every trial in it was "
        "decided; PRUNED trials were hopeless there). `verdict` is the pruner's call in training, "
        "also kept when the run went on because another of its trials was undecided. Traces: "
        '`runs/` (each trial\'s user attribute `trace`). Data: `dlf.open_study("study.nc")`.',
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
