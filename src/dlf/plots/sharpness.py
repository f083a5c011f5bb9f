"""Network size against learning rate: mean loss and Hessian λmax during training (2024 Fig. 1).

Each line is the mean over the seeds of one (width, η) pair; widths come from separate traces
(width is per run), learning rates from the members of each trace (``train.lr`` a list). The
λmax panel carries the edge-of-stability line c/η for each learning rate (c = 2 for gradient
descent, 2 + 2β with heavy-ball momentum: :mod:`dlf.analysis.stability`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from dlf.analysis.stability import threshold_label, trace_stability_factor
from dlf.errors import DlfError
from dlf.plots.style import (
    THRESHOLD,
    legend_outside,
    new_figure,
    plain_log_axis,
    require,
    run_config,
    styled,
)
from dlf.plots.tables import label

NEEDED = ("loss", "lanczos_eigenvalues")
GROUPS = ("width", "eta", "amplitude", "period")
DASHES = ("-", "--", ":", "-.")


def seed_means(datasets: Sequence[xr.Dataset]) -> Iterator[tuple[dict[str, float], xr.Dataset]]:
    """(group values, mean over its seeds of loss and λmax) for every (width, η, A, T) group."""
    for ds in datasets:
        require(ds, NEEDED, "sharpness")
        points = pd.DataFrame({k: ds[k].values for k in GROUPS[1:]})
        for values, index in points.groupby(list(GROUPS[1:])).indices.items():
            members = ds.isel(member=index)
            series = {
                "loss": members["loss"],
                "lambda_max": members["lanczos_eigenvalues"].isel(lanczos_index=0),
            }
            n = len(index)
            mean = xr.Dataset(
                {k: v.mean("member") for k, v in series.items()}
                | {
                    f"{k}_sem": v.std("member", ddof=1) / np.sqrt(n) if n > 1 else 0 * v[0]
                    for k, v in series.items()
                }
            )
            group = dict(zip(GROUPS, (int(ds["width"]), *values), strict=True))
            yield {**group, "c": trace_stability_factor(ds), "seeds": len(index)}, mean


@styled
def sharpness(datasets: Sequence[xr.Dataset]) -> Figure:
    """Two panels: mean loss (log scale) and mean λmax against the step, one line per group,
    with bands of ± the error of the mean over seeds."""
    groups = sorted(seed_means(datasets), key=lambda g: tuple(g[0].values()))
    if not groups:
        raise DlfError("figure 'sharpness' needs at least one trace")
    differ = {k for k in GROUPS if len({g[k] for g, _ in groups}) > 1}
    widths = sorted({g["width"] for g, _ in groups})
    etas = sorted({g["eta"] for g, _ in groups})
    colours = dict(zip(widths, sns.color_palette("colorblind", len(widths)), strict=True))
    dashes = dict(zip(etas, itertools.cycle(DASHES), strict=False))
    fig, axes = new_figure(1, 2, size=(11, 4.0), sharex=True)
    loss_ax, lam_ax = axes[0]
    for values, mean in groups:
        style = {"color": colours[values["width"]], "ls": dashes[values["eta"]], "lw": 1}
        name = label(values, GROUPS, differ | {"width"})
        for ax, key, steps in ((loss_ax, "loss", "step"), (lam_ax, "lambda_max", "lanczos_step")):
            ax.plot(mean[steps], mean[key], label=name, **style)
            lo, hi = mean[key] - mean[f"{key}_sem"], mean[key] + mean[f"{key}_sem"]
            ax.fill_between(mean[steps], lo, hi, color=style["color"], alpha=0.2, lw=0)
    for eta, c in sorted({(g["eta"], g["c"]) for g, _ in groups}):
        lam_ax.axhline(c / eta, **{**THRESHOLD, "ls": dashes[eta]})
        lam_ax.annotate(
            f"{threshold_label(c)} = {c / eta:g}",
            (1, c / eta),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize="small",
        )
    loss_ax.set_yscale("log")
    plain_log_axis(loss_ax.yaxis)
    loss_ax.set_ylabel("mean loss F (log scale)")
    lam_ax.set_ylabel("mean Hessian λ$_{max}$")
    for ax in axes[0]:
        ax.set_xlabel("step t")
    legend_outside(lam_ax, title="line style: η; colour: width")
    fig.suptitle(_title(datasets, groups))
    return fig


def _title(datasets: Sequence[xr.Dataset], groups: list) -> str:
    """What the figure shows and at which set-up: data, loss, steps and seeds per line."""
    configs = [run_config(ds) for ds in datasets]
    data = sorted({str(c["data"]["name"]) for c in configs if "data" in c})
    losses = sorted({str(ds.attrs.get("loss_name", "?")).upper() for ds in datasets})
    steps = sorted({int(ds.attrs["total_steps"]) for ds in datasets if "total_steps" in ds.attrs})
    seeds = sorted({g["seeds"] for g, _ in groups})
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    parts = [*data, *losses, " / ".join(map(str, steps)) + " steps" if steps else ""]
    return (
        "Loss and sharpness during training (mean ± sem of "
        f"{n} seeds per line; black: the edge of stability): " + ", ".join(p for p in parts if p)
    )
