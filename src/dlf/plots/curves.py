"""Training curves of whole trials side by side: train and validation accuracy and Γ_i(t), each
the mean over a trial's seeds with a band of ± the error of the mean.

A min-width study's report draws its best dynamical trial at w* against the static loss at the
same width with it (``curves_at_w_star.png``); any notebook can do the same for any members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dlf.errors import DlfError
from dlf.plots.style import legend_outside, loss_color, new_figure, require, styled

NEEDED = ("eval_train_accuracy", "val_accuracy", "gamma")
PANELS = (("eval_train_accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))
CLASS_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Trial:
    """The members (seeds) of one trial in a trace, and its legend label."""

    label: str
    loss: str
    members: xr.Dataset


def mean_band(values: xr.DataArray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean over members, error of that mean (0 for one member) and the number of members;
    diverged members (NaN) are left out."""
    n = int(values.notnull().any(values.dims[1:]).sum()) if values.ndim > 1 else 1
    mean = values.mean("member", skipna=True).values
    sem = values.std("member", ddof=1, skipna=True).values / np.sqrt(n) if n > 1 else 0 * mean
    return mean, sem, n


def _accuracy(ax: Axes, trial: Trial, name: str) -> None:
    values = trial.members[name]
    mean, sem, n = mean_band(values)
    steps = values["eval_step"].values
    color = loss_color(trial.loss)
    ax.plot(steps, mean, "o-", ms=3, lw=1.2, color=color, label=f"{trial.label}, n = {n}")
    ax.fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.25, lw=0)


def _gamma(ax: Axes, trial: Trial) -> None:
    gamma = trial.members["gamma"].isel(member=0)
    color = loss_color(trial.loss)
    if np.allclose(gamma.values, 1.0):
        ax.plot(gamma["step"], gamma.isel(class_index=0), color=color, zorder=1, label="Γ$_i$ = 1")
        return
    for c, style in zip(gamma["class_index"].values, CLASS_STYLES, strict=False):
        ax.plot(gamma["step"], gamma.sel(class_index=c), style, lw=1, color=color, label=f"Γ$_{c}$")


@styled
def trial_curves(trials: Sequence[Trial], title: str, target: float | None = None) -> Figure:
    """Three panels against the step: train accuracy, validation accuracy (with ``target``)
    and Γ_i(t) of each trial, one colour per loss."""
    if not trials:
        raise DlfError("figure 'curves' needs at least one trial")
    for trial in trials:
        require(trial.members, NEEDED, "curves")
    fig, axes = new_figure(3, 1, size=(7.2, 6.4), sharex=True)
    for (name, label), ax in zip(PANELS, axes[:2, 0], strict=True):
        for trial in trials:
            _accuracy(ax, trial, name)
        ax.set_ylabel(f"{label} (fraction)")
    if target is not None:
        axes[1, 0].axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
    for trial in trials:
        _gamma(axes[2, 0], trial)
    axes[2, 0].set_ylabel("Γ$_i$(t)")
    axes[2, 0].set_xlabel("step t")
    for ax in axes[:, 0]:
        legend_outside(ax)
    fig.suptitle(title)
    return fig
