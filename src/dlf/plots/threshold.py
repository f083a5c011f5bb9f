"""The curvature threshold: Hessian λmax at the onset of instabilities versus η, log-log.

2021 Fig. 5 (series by width) and 2024 Fig. 4 (series by loss): per learning rate, the mean over
members of each member's mean λmax at onset (the bifurcation detector's summary), with the error
of the mean, the members themselves and the fit λ = c·η^b, against the edge-of-stability
prediction c/η (2/η for gradient descent, (2 + 2β)/η with heavy-ball momentum). Also draws the
result of a threshold study (``threshold.nc`` of ``configs/threshold_vs_lr.yaml``; the study
saves this figure as ``threshold.png``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from dlf.analysis.stability import threshold_label, trace_stability_factor
from dlf.analysis.threshold import fit_threshold, summary
from dlf.errors import DlfError
from dlf.plots.style import THRESHOLD, legend_outside, loss_color, mean_sem, new_figure, styled
from dlf.plots.tables import label, member_table, varying

ONSET = "bifurcation_mean_lambda_onset"
STUDY_DIM = "study_member"  # the member dimension of a threshold study's threshold.nc
SERIES = ("loss", "width")


def study_table(result: xr.Dataset) -> pd.DataFrame:
    """The members of a threshold study's ``threshold.nc`` (``dlf.studies.threshold``)."""
    return pd.DataFrame(
        {
            "eta": result["member_eta"].values,
            "lambda_onset": result["lambda_onset"].values,
            "lambda_crossing": result["ratio_crossing"].values * 2 / result["member_eta"].values
            if "ratio_crossing" in result
            else np.nan,
            "loss": f"study ({result.attrs.get('onset', 'first')} onset)",
            "width": 0,
            "study": True,
        }
    )


def onset_table(datasets: Sequence[xr.Dataset]) -> pd.DataFrame:
    """Members with a measured λ at onset: loss, width, η, ``lambda_onset``.

    Traces give each member's mean λmax over its onsets; a threshold study's result gives what
    the study chose (its first onset by default).
    """
    studies = [ds for ds in datasets if STUDY_DIM in ds.dims]
    traces = [ds for ds in datasets if STUDY_DIM not in ds.dims]
    tables = [study_table(s) for s in studies]
    if traces or not studies:
        tables.append(member_table(traces, "threshold", [ONSET], lambda_onset=lambda ds: ds[ONSET]))
    table = pd.concat(tables, ignore_index=True)
    table["study"] = table.get("study", pd.Series(False, index=table.index)).fillna(False)
    table = table[np.isfinite(table["lambda_onset"]) & (table["lambda_onset"] > 0)]
    if table["eta"].nunique() < 2:
        raise DlfError(
            "figure 'threshold' needs instabilities measured at two or more learning rates; "
            f"found {table['eta'].nunique()} (give train.lr a list or pass several traces)"
        )
    return table


@styled
def threshold(datasets: Sequence[xr.Dataset]) -> Figure:
    """λmax at onset versus η on log-log axes: members, mean ± error of the mean per η and the
    fit λ = c·η^b (exponent ± its error in the legend) per series, with the optimisers' c/η
    lines."""
    table = onset_table(datasets)
    fig, axes = new_figure(size=(6.8, 4.0))
    ax = axes[0, 0]
    differ = varying(table, SERIES)
    grid = np.geomspace(table["eta"].min() / 1.3, table["eta"].max() * 1.3, 50)
    for i, (key, group) in enumerate(table.groupby(list(SERIES))):
        color = f"C{i}" if "width" in differ else loss_color(str(key[0]))  # one per loss
        eta, lam = group["eta"].values, group["lambda_onset"].values
        name = label(dict(zip(SERIES, key, strict=True)), SERIES, differ)
        ax.scatter(eta, lam, s=10, alpha=0.35, color=color)
        if group["eta"].nunique() > 1:
            fit = fit_threshold(eta, lam)
            ax.plot(grid, fit.prefactor * grid**fit.exponent, "-", color=color, lw=1)
            exponent = f"{fit.exponent:.2f} ± {fit.exponent_se:.2f}"
            name = f"{name + ': ' if name else ''}fit η$^{{{exponent}}}$"
        if group["study"].all():
            distribution_bars(ax, group, color, name)
        else:
            stats = [mean_sem(g["lambda_onset"].values) for _, g in group.groupby("eta")]
            mean, sem = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
            etas = np.array(sorted(group["eta"].unique()))
            ax.errorbar(etas, mean, yerr=sem, fmt="o", ms=4, capsize=3, color=color, label=name)
    for c in sorted({trace_stability_factor(ds) for ds in datasets}):
        ax.plot(grid, c / grid, **THRESHOLD, label=threshold_label(c))
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_xticks(np.unique(table["eta"]))
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("Hessian λ$_{max}$ at onset")
    legend_outside(ax)
    overall = fit_threshold(table["eta"].values, table["lambda_onset"].values)
    ratio, sem_ratio = overall.ratio_mean, overall.ratio_sem
    ax.set_title(f"mean λ·η/2 = {ratio:.2f} ± {sem_ratio:.2f} ({overall.n} members)")
    fig.suptitle("Hessian λmax at the onset of instabilities versus the learning rate")
    return fig


def distribution_bars(
    ax: Axes, group: pd.DataFrame, color: str | tuple[float, float, float], name: str
) -> None:
    """Per η: median λ at the visible onset, its interquartile range (thick) and the bootstrap
    interval of the median (capped); the median λ at the crossing with its range (open)."""
    etas = np.array(sorted(group["eta"].unique()))
    for column, shift, marker in (("lambda_onset", 1.0, "o"), ("lambda_crossing", 1.04, "s")):
        rows = [summary(g[column].to_numpy(float)) for _, g in group.groupby("eta")]
        stat = {key: np.array([r[key] for r in rows]) for key in rows[0]}
        median = stat["median"]
        if not np.isfinite(median).any():
            continue
        x = etas * shift  # the crossing beside the onset, not on top of it
        quartiles = np.stack([median - stat["q25"], stat["q75"] - median])
        ax.errorbar(x, median, yerr=quartiles, fmt="none", lw=3, alpha=0.5, color=color)
        if column == "lambda_onset":
            ci = np.stack([median - stat["ci_low"], stat["ci_high"] - median])
            ax.errorbar(
                x,
                median,
                yerr=np.nan_to_num(ci),
                fmt=marker,
                ms=4,
                capsize=3,
                color=color,
                label=f"{name} (visible onset)",
            )
        else:
            ax.plot(x, median, marker, ms=4, mfc="none", color=color, label="λ at crossing")
