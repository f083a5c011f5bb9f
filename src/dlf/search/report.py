"""``report.md`` of a study: the answer, the figures (seaborn PNGs) and a table of the trials."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from dlf.search.config import StudyConfig
from dlf.search.results import Finding

REPORT_NAME = "report.md"
WIDTH_FIGURE = "accuracy_vs_width.png"
SCHEDULE_FIGURE = "schedules_at_w_star.png"


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


def width_figure(
    frame: pd.DataFrame, found: dict[str, Finding], target: float, metric: str, path: Path
) -> None:
    """Every measured trial's metric against width, static vs dynamical, with the target line."""
    done = frame[frame["state"].isin(["COMPLETE", "PRUNED"])].copy()
    done["loss"] = done["kind"].map({k: f"{f.loss} ({k})" for k, f in found.items()})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not done.empty:
        sns.scatterplot(
            data=done, x="width", y="shown", hue="loss", style="state", alpha=0.6, ax=ax
        )
        best = done.groupby(["loss", "width"], as_index=False)["shown"].max()
        sns.lineplot(data=best, x="width", y="shown", hue="loss", legend=False, ax=ax)
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    for f in found.values():
        if f.w_star is not None:
            ax.axvline(f.w_star, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden width")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title("best over (A, T) per width: dynamical vs static loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def schedule_figure(
    frame: pd.DataFrame, w_star: int, target: float, metric: str, path: Path
) -> None:
    """The (A, T) points tried at w*, coloured by the metric, the ones at the target marked."""
    at = frame[
        (frame["kind"] == "dynamical")
        & (frame["width"] == w_star)
        & frame["state"].isin(["COMPLETE", "PRUNED"])
    ].copy()
    at["reaches target"] = at["shown"] >= target
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    sns.scatterplot(
        data=at,
        x="period",
        y="amplitude",
        hue="shown",
        style="reaches target",
        palette="viridis",
        s=70,
        ax=ax,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("period T (steps)")
    ax.set_ylabel("amplitude A")
    ax.set_title(f"(A, T) tried at w* = {w_star}; colour: {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    lines += ["", "## Figures", "", f"![{search.metric} versus width]({WIDTH_FIGURE})", ""]
    if dyn is not None and dyn.w_star is not None:
        schedule_figure(
            frame, dyn.w_star, search.target, search.metric, directory / SCHEDULE_FIGURE
        )
        lines += [f"![(A, T) tried at w*]({SCHEDULE_FIGURE})", ""]
    cost = ", ".join(
        f"{f.kind}: {f.trials} trials, {f.member_steps:,} member-steps" for f in found.values()
    )
    lines += [
        "## Trials",
        "",
        f"Cost: {cost}. A trial's value is the seed mean at its last evaluation (`measured at "
        f"step` < {run.train.steps} when its run stopped early because every trial in it was "
        "decided); PRUNED trials show no value. Traces: `runs/` (each trial's user attribute "
        '`trace`). Data: `dlf.open_study("study.nc")`.',
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
