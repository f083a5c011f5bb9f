"""Phase diagrams: final training and validation accuracy over the (T, A) plane (2021 Fig. 3).

One ensemble trace whose members span a grid of amplitudes and periods (``schedule.amplitude``
and ``schedule.period`` lists, several seeds each) gives the whole diagram: each cell is the mean
over seeds of the final model's accuracy, annotated mean ± error of the mean where there are
several seeds and few cells. The row A = 1 is the static loss. Cells have a minimum size, so a
small grid (2 × 1 in ``configs/quick.yaml``) stays readable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from dlf.errors import DlfError
from dlf.plots.style import new_figure, require, run_name, setup, styled

PANELS = (("eval_train_accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"))


def accuracy_grid(ds: xr.Dataset, statistic: str = "mean") -> dict[str, pd.DataFrame]:
    """Mean (or ``"sem"``) final accuracy per (A, T) as tables: amplitudes as rows (largest
    first), periods as columns; one table per panel variable. Also checks that the trace makes a
    diagram."""
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
    means = frame.groupby(["A", "T"]).agg(statistic)
    return {name: means[name].unstack("T").sort_index(ascending=False) for name, _ in PANELS}


def cell_text(mean: pd.DataFrame, sem: pd.DataFrame) -> np.ndarray:
    """``0.93`` or, with an error, ``0.93 ± 0.01`` for every cell."""
    text = [
        [
            f"{m:.2f}" if not np.isfinite(e) else f"{m:.2f}\n± {e:.2f}"
            for m, e in zip(mr, er, strict=True)
        ]
        for mr, er in zip(mean.values, sem.values, strict=True)
    ]
    return np.array(text, dtype=object)


@styled
def phase(ds: xr.Dataset) -> Figure:
    """Heat maps of the mean final training and validation accuracy over (T, A)."""
    grids = accuracy_grid(ds)
    errors = accuracy_grid(ds, "sem")
    first = next(iter(grids.values()))
    rows, cols = first.shape
    fig, axes = new_figure(
        1, 2, size=(max(7.0, 2.6 + 1.5 * cols), max(3.2, 1.6 + 0.6 * rows)), sharey=True
    )
    annotate = first.size <= 60
    for ax, (name, label) in zip(axes[0], PANELS, strict=True):
        sns.heatmap(
            grids[name],
            ax=ax,
            vmin=0,
            vmax=1,
            cmap="viridis",
            annot=cell_text(grids[name], errors[name]) if annotate else False,
            fmt="",
            annot_kws={"fontsize": 9},
            cbar=ax is axes[0, -1],
            cbar_kws={"label": "mean final accuracy (fraction)"},
        )
        ax.set_title(label)
        ax.set_xlabel("period T (steps)")
        ax.set_ylabel("amplitude A")
        ax.set_xticklabels([f"{t:g}" for t in grids[name].columns])
        ax.set_yticklabels([f"{a:g}" for a in grids[name].index], rotation=0)
    axes[0, 1].set_ylabel("")
    seeds = int(np.unique(ds["seed"].values).size)
    fig.suptitle(
        f"Final accuracy over the (T, A) plane: {run_name(ds)}\n{setup(ds)}\n"
        f"evaluated at step {int(ds['eval_step'][-1])}, mean ± sem of {seeds} seeds per cell "
        "(A = 1: the static loss)"
    )
    return fig
