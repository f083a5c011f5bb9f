"""Phase diagrams: final training and validation accuracy over the (T, A) plane (2021 Fig. 3).

One ensemble trace whose members span a grid of amplitudes and periods (``schedule.amplitude``
and ``schedule.period`` lists, several seeds each) gives the whole diagram: each cell is the mean
over seeds of the final model's accuracy. The row A = 1 is the static loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from dlf.errors import DlfError
from dlf.plots.style import new_figure, require, run_name, styled

PANELS = (("eval_train_accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"))


def accuracy_grid(ds: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Mean final accuracy per (A, T) as tables: amplitudes as rows (largest first), periods as
    columns; one table per panel variable. Also checks that the trace makes a diagram."""
    require(ds, [name for name, _ in PANELS], "phase")
    if ds.sizes.get("eval_step", 0) == 0:
        raise DlfError("figure 'phase' needs at least one evaluation; the trace has none yet")
    etas = np.unique(ds["eta"].values)
    if etas.size > 1:
        raise DlfError(
            "figure 'phase' needs one learning rate; this trace has "
            f"η = {', '.join(f'{e:g}' for e in etas)}: select members first, "
            "e.g. ds.where(ds.eta == 1.0, drop=True)"
        )
    final = ds.isel(eval_step=-1)
    frame = pd.DataFrame(
        {
            "A": ds["amplitude"].values,
            "T": ds["period"].values,
            **{name: final[name].values for name, _ in PANELS},
        }
    )
    if len(frame[["A", "T"]].drop_duplicates()) < 2:
        raise DlfError(
            "figure 'phase' needs members on a (T, A) grid; this trace has a single point "
            f"(A = {frame['A'].iloc[0]:g}, T = {frame['T'].iloc[0]:g}): give schedule.amplitude "
            "and schedule.period lists"
        )
    means = frame.groupby(["A", "T"]).mean()
    return {name: means[name].unstack("T").sort_index(ascending=False) for name, _ in PANELS}


@styled
def phase(ds: xr.Dataset) -> Figure:
    """Heat maps of the mean final training and validation accuracy over (T, A)."""
    grids = accuracy_grid(ds)
    first = next(iter(grids.values()))
    fig, axes = new_figure(
        1, 2, size=(4.2 + 0.5 * first.shape[1], 1.6 + 0.35 * first.shape[0]), sharey=True
    )
    annotate = first.size <= 150
    for ax, (name, label) in zip(axes[0], PANELS, strict=True):
        sns.heatmap(
            grids[name],
            ax=ax,
            vmin=0,
            vmax=1,
            cmap="viridis",
            annot=annotate,
            fmt=".2f",
            annot_kws={"fontsize": 6},
        )
        ax.set_title(label)
        ax.set_xlabel("period T")
        ax.set_ylabel("amplitude A")
        ax.set_xticklabels([f"{t:g}" for t in grids[name].columns])
        ax.set_yticklabels([f"{a:g}" for a in grids[name].index], rotation=0)
    axes[0, 1].set_ylabel("")
    seeds = int(np.unique(ds["seed"].values).size)
    fig.suptitle(
        f"{run_name(ds)}: {ds.attrs.get('loss_name', '')}, width {int(ds['width'])}, "
        f"η = {float(ds['eta'][0]):g}, step {int(ds['eval_step'][-1])}, mean of {seeds} seeds"
    )
    return fig
