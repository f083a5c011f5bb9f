"""Network size against learning rate: mean loss and Hessian λmax during training (2024 Fig. 1).

Each line is the mean over the seeds of one (width, η) pair; widths come from separate traces
(width is per run), learning rates from the members of each trace (``train.lr`` a list). The
λmax panel carries the edge-of-stability line c/η for each learning rate (c = 2 for gradient
descent, 2 + 2β with heavy-ball momentum: :mod:`dlf.analysis.stability`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from dlf.analysis.stability import threshold_label, trace_stability_factor
from dlf.errors import DlfError
from dlf.plots.style import new_figure, require, styled
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
            mean = xr.Dataset(
                {
                    "loss": members["loss"].mean("member"),
                    "lambda_max": members["lanczos_eigenvalues"].isel(eig_index=0).mean("member"),
                }
            )
            group = dict(zip(GROUPS, (int(ds["width"]), *values), strict=True))
            yield {**group, "c": trace_stability_factor(ds)}, mean


@styled
def sharpness(datasets: Sequence[xr.Dataset]) -> Figure:
    """Two panels: mean loss (log scale) and mean λmax against the step, one line per group."""
    groups = sorted(seed_means(datasets), key=lambda g: tuple(g[0].values()))
    if not groups:
        raise DlfError("figure 'sharpness' needs at least one trace")
    differ = {k for k in GROUPS if len({g[k] for g, _ in groups}) > 1}
    widths = sorted({g["width"] for g, _ in groups})
    etas = sorted({g["eta"] for g, _ in groups})
    colours = dict(zip(widths, sns.color_palette("colorblind", len(widths)), strict=True))
    dashes = dict(zip(etas, itertools.cycle(DASHES), strict=False))
    fig, axes = new_figure(1, 2, size=(10, 3.8), sharex=True)
    loss_ax, lam_ax = axes[0]
    for values, mean in groups:
        style = {"color": colours[values["width"]], "ls": dashes[values["eta"]], "lw": 1}
        name = label(values, GROUPS, differ | {"width"})
        loss_ax.plot(mean["step"], mean["loss"], label=name, **style)
        lam_ax.plot(mean["lanczos_step"], mean["lambda_max"], label=name, **style)
    for eta, c in sorted({(g["eta"], g["c"]) for g, _ in groups}):
        lam_ax.axhline(c / eta, color="k", ls=dashes[eta], lw=0.8, alpha=0.6)
        lam_ax.annotate(
            f"{threshold_label(c)} = {c / eta:g}",
            (1, c / eta),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize="small",
        )
    loss_ax.set_yscale("log")
    loss_ax.yaxis.set_major_formatter(ScalarFormatter())
    loss_ax.yaxis.set_minor_formatter(NullFormatter())
    loss_ax.set_ylabel("mean loss F")
    lam_ax.set_ylabel("mean Hessian λ$_{max}$")
    for ax in axes[0]:
        ax.set_xlabel("step t")
    loss_ax.legend(fontsize="small")
    return fig
