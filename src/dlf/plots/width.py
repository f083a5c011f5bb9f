"""Validation accuracy versus network width, static against dynamical losses (2024 Fig. 3).

Works from a width sweep (one trace per width; members are seeds, and A = 1 members of a
dynamical loss are its static counterpart, so one run gives both curves) or from a min-width
study's ``study.nc`` (the best complete trial at each width, per track). One panel per static
loss family and learning rate (CE/DCE at η = 1 and MSE/DMSE at η = 0.075 in the paper); error
bars are errors of the mean over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from dlf.errors import DlfError
from dlf.plots.style import mean_sem, new_figure, styled
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


def study_table(study: xr.Dataset) -> pd.DataFrame:
    """Per-seed metric of the best complete trial at each width, per track of a min-width study."""
    eta = float(np.atleast_1d(json.loads(study.attrs["config"])["train"]["lr"])[0])
    trials = pd.DataFrame(
        {k: study[k].values for k in ("kind", "state", "width", "value")}
    ).reset_index(names="position")
    trials = trials[(trials["state"] == "COMPLETE") & np.isfinite(trials["value"])]
    if trials.empty:
        raise DlfError("figure 'width' needs complete trials; the study has none yet")
    frames = []
    for (kind, w), group in trials.groupby(["kind", "width"]):
        best = study.isel(trial=int(group.loc[group["value"].idxmax(), "position"]))
        loss = str(study.attrs.get(f"{kind}_loss", kind))
        series = f"{loss.upper()} (best A, T)" if kind == "dynamical" else loss.upper()
        frames.append(
            pd.DataFrame(
                {
                    "series": series,
                    "family": loss_kind(loss)[0],
                    "eta": eta,
                    "width": int(w),
                    "seed": best["seed"].values,
                    "val_accuracy": best["seed_values"].values,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


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
    fig, axes = new_figure(1, len(panels), size=(4.4 * len(panels), 3.6), sharey=True)
    for ax, ((family, eta), group) in zip(axes[0], panels, strict=True):
        for series, rows in group.groupby("series", sort=False):
            per_width = rows.groupby("width")["val_accuracy"]
            stats = np.array([mean_sem(v.values)[:2] for _, v in per_width])
            ax.errorbar(
                list(per_width.groups),
                stats[:, 0],
                yerr=stats[:, 1],
                fmt="o-",
                ms=4,
                capsize=3,
                label=series,
            )
        for study in studies:
            ax.axhline(float(study.attrs["target"]), color="k", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        widths = sorted(group["width"].unique())
        ax.set_xticks(widths, labels=[str(w) for w in widths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("hidden width")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{family.upper()} family, η = {eta:g}")
        ax.legend(fontsize="small")
    return fig
