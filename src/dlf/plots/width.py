"""Validation accuracy versus network width, static against dynamical losses (2024 Fig. 3).

Works from a width sweep (one trace per width; members are seeds, and A = 1 members of a
dynamical loss are its static counterpart, so one run gives both curves) or from a min-width
study's ``study.nc`` (per track and width: the values on fresh seeds where the rung was
confirmed, otherwise the search's pick, drawn open and dashed as selected). One panel per static
loss family and learning rate (CE/DCE at η = 1 and MSE/DMSE at η = 0.075 in the paper); error
bars are errors of the mean over seeds. Each loss keeps its colour of :data:`LOSS_COLORS`; a
study adds its target accuracy and marks each track's w* (the smallest width reaching it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from dlf.errors import DlfError
from dlf.plots.style import loss_color, mean_sem, new_figure, run_config, styled
from dlf.plots.tables import member_table


@cache
def loss_kind(name: str) -> tuple[str, bool]:
    """(static counterpart, dynamical?) of a registered loss; unknown names are their own family."""
    from dlf.hooks.manager import load_plugins

    losses = load_plugins().registries.losses
    if name not in losses:
        return name, True
    loss = losses.get(name, "loss.name")
    return loss.static_name, loss.dynamical


def sweep_table(traces: Sequence[xr.Dataset]) -> pd.DataFrame:
    """Final validation accuracy per member, with its ``family`` and ``series`` (legend label).

    A member is static when its loss is static or its amplitude is 1; the same seed trained with
    the static loss in two runs is one measurement, counted once. A dynamical loss run at several
    (A, T) gets one series per point.
    """
    table = member_table(
        traces,
        "width",
        ["val_accuracy"],
        val_accuracy=lambda ds: ds["val_accuracy"].isel(eval_step=-1),
    )
    kinds = table["loss"].map(loss_kind)
    table["family"] = [k[0] for k in kinds]
    static = ~np.array([k[1] for k in kinds]) | (table["amplitude"] == 1)
    table["series"] = np.where(static, table["family"].str.upper(), table["loss"].str.upper())
    settings = table[~static].groupby("loss")[["amplitude", "period"]].nunique()
    several = settings[(settings > 1).any(axis=1)].index
    detail = ~static & table["loss"].isin(several)
    table.loc[detail, "series"] = [
        f"{row.loss.upper()} A={row.amplitude:g} T={row.period:g}"
        for row in table[detail].itertuples()
    ]
    duplicate = static & table.duplicated(["family", "width", "eta", "seed", "series"])
    return table[~duplicate]


SELECTED = "search seeds, selected"  # marks a series whose values chose its own point


def study_table(study: xr.Dataset) -> pd.DataFrame:
    """Per-seed metric at each width tried, per track of a min-width study.

    A rung confirmed on fresh seeds draws those seeds' values (unbiased); a rung never confirmed
    draws its search pick on the search seeds, labelled as selected: the best of several trials
    is biased upwards, so the two are kept apart in the legend.
    """
    eta = float(np.atleast_1d(json.loads(study.attrs["config"])["train"]["lr"])[0])
    confirmed = _confirmed_rungs(study)
    trials = pd.DataFrame(
        {k: study[k].values for k in ("kind", "state", "width", "value")}
    ).reset_index(names="position")
    trials = trials[(trials["state"] == "COMPLETE") & np.isfinite(trials["value"])]
    if trials.empty:
        raise DlfError("figure 'width' needs complete trials; the study has none yet")
    frames = []
    for (kind, w), group in trials.groupby(["kind", "width"]):
        loss = str(study.attrs.get(f"{kind}_loss", kind))
        name = f"{loss.upper()} (best A, T)" if kind == "dynamical" else loss.upper()
        if (kind, int(w)) in confirmed:
            seeds, values = confirmed[kind, int(w)]
            series = f"{name}, fresh seeds"
        else:
            best = study.isel(trial=int(group.loc[group["value"].idxmax(), "position"]))
            seeds, values = best["seed"].values, best["seed_values"].values
            series = f"{name}, {SELECTED}"
        frames.append(
            pd.DataFrame(
                {
                    "series": series,
                    "family": loss_kind(loss)[0],
                    "eta": eta,
                    "width": int(w),
                    "seed": seeds,
                    "val_accuracy": values,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _confirmed_rungs(study: xr.Dataset) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(track, width) -> (fresh seeds, their values) for every rung confirmed on fresh seeds;
    empty for a study written before confirmation existed."""
    if "confirm_values" not in study:
        return {}
    found = {}
    for i in range(study.sizes["rung"]):
        rung = study.isel(rung=i)
        values = rung["confirm_values"].values
        kept = np.isfinite(values)
        if int(rung["confirm_n"]) > 0 and kept.any():
            key = (str(rung["rung_kind"].values), int(rung["rung_width"]))
            found[key] = (study["confirm_seed"].values[kept], values[kept])
    return found


@styled
def width(datasets: Sequence[xr.Dataset]) -> Figure:
    """Mean final validation accuracy ± error of the mean versus width, one line per loss.

    ``datasets`` are traces of a width sweep and/or min-width studies (``dlf.open_study``); a
    study also draws its target accuracy.
    """
    studies = [ds for ds in datasets if "trial" in ds.dims]
    traces = [ds for ds in datasets if "member" in ds.dims]
    tables = [study_table(s) for s in studies] + ([sweep_table(traces)] if traces else [])
    if not tables:
        raise DlfError("figure 'width' needs traces of a width sweep or a min-width study")
    table = pd.concat(tables, ignore_index=True)
    if table["width"].nunique() < 2:
        raise DlfError(
            "figure 'width' needs at least two widths (a width sweep: "
            "dlf-study run configs/width_sweep_quick.yaml)"
        )
    panels = list(table.groupby(["family", "eta"]))
    fig, axes = new_figure(1, len(panels), size=(4.4 * len(panels) + 2.2, 4.2), sharey=True)
    for ax, ((family, eta), group) in zip(axes[0], panels, strict=True):
        for series, rows in group.groupby("series", sort=False):
            per_width = rows.groupby("width")["val_accuracy"]
            stats = np.array([mean_sem(v.values)[:2] for _, v in per_width])
            ax.errorbar(
                list(per_width.groups),
                stats[:, 0],
                yerr=stats[:, 1],
                fmt="o--" if SELECTED in str(series) else "o-",
                mfc="none" if SELECTED in str(series) else None,
                ms=4,
                capsize=3,
                color=loss_color(str(series)),
                label=series,
            )
        for study in studies:
            _study_marks(ax, study)
        ax.set_xscale("log")
        widths = sorted(group["width"].unique())
        ax.set_xticks(widths, labels=[str(w) for w in widths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(_width_label(studies))
        ax.set_ylabel("final validation accuracy")
        ax.set_title(f"{family.upper()} family, η = {eta:g}")
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        handles |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(list(handles.values()), list(handles), loc="outside right center")
    fig.suptitle(_title(traces, studies, table))
    return fig


def _study_marks(ax, study: xr.Dataset) -> None:
    """A min-width study's target accuracy and each track's w*, in the track's loss colour."""
    target = float(study.attrs["target"])
    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
    for kind in ("static", "dynamical"):
        w_star = int(study.attrs.get(f"{kind}_w_star", -1))
        if w_star > 0:
            loss = str(study.attrs.get(f"{kind}_loss", kind)).upper()
            ax.axvline(
                w_star, color=loss_color(loss), ls=":", lw=1.5, label=f"w* {loss} = {w_star}"
            )


def _width_label(studies: Sequence[xr.Dataset]) -> str:
    """The x axis: the studies' size option (e.g. myrtle5's channels), else the MLP's width."""
    labels = {str(s["width"].attrs.get("long_name", "width")) for s in studies} - {"width"}
    return labels.pop() if len(labels) == 1 else "hidden width (units per layer)"


def _title(traces: Sequence[xr.Dataset], studies: Sequence[xr.Dataset], table: pd.DataFrame) -> str:
    """What the figure shows and at which set-up: data, steps, seeds per point, target."""
    configs = [run_config(ds) for ds in [*traces, *studies]]
    steps = sorted({int(c["train"]["steps"]) for c in configs if "train" in c})
    data = sorted({str(c["data"]["name"]) for c in configs if "data" in c})
    seeds = table.groupby(["series", "eta", "width"])["val_accuracy"].count()
    n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    parts = [", ".join(data), " / ".join(str(x) for x in steps) + " steps" if steps else ""]
    parts += [f"mean ± sem of {n} seeds per point"]
    targets = sorted({float(s.attrs["target"]) for s in studies})
    if targets:
        parts.append("target " + ", ".join(f"{t:g}" for t in targets))
    return "Final validation accuracy versus width\n" + ", ".join(p for p in parts if p)
