"""The figures of a study's report (seaborn PNGs): the metric against the width knob with each
rung's search pick, confirmation and verdict, and training curves at w*.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, so writing a report never
touches the pyplot backend of a notebook that imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator, ScalarFormatter
from matplotlib.transforms import blended_transform_factory

from dlf.engine.trace import open_trace
from dlf.plots.curves import Trial, trial_curves
from dlf.plots.style import legend_outside, loss_color, new_figure, styled
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.findings import Finding

WIDTH_FIGURE = "accuracy_vs_width.png"
SCHEDULE_FIGURE = "curves_at_w_star.png"


def _log_width_axis(ax: Axes, widths: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(widths)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


VERDICT_MARKS = {"reaches": "✓", "does not reach": "✗", "within noise": "≈"}


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
    knob = config.knob
    ax.set_xlabel("hidden width (units)" if knob.is_mlp_width else f"{knob.label} ({knob.field})")
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
