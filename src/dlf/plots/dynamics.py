"""Learning dynamics of one member: Γ_i(t), F(t), F(t) − F(t−1), accuracy, Hessian and NTK λ.

The 2021 paper's Fig. 4 (and the 2024 paper's Fig. 2, left): the Hessian panel carries the
edge-of-stability line c/η_t (2/η_t for gradient descent, (2 + 2β)/η_t with momentum), and,
where the bifurcation detector ran, the detected onsets (dash-dotted) and ends (dotted) of the
instabilities across the panels and the mean λmax at onset, explained in a legend below the
panels. Legends sit right of the panels, off the data; the Hessian and NTK legends say how many
samples each column rests on (they are recorded every few steps only).
An optional zoom window repeats every panel for a stretch of steps in a second column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dlf.analysis.stability import trace_stability_factor
from dlf.errors import DlfError
from dlf.plots.style import (
    END,
    ONSET,
    draw_threshold,
    legend_below,
    legend_outside,
    new_figure,
    require,
    run_name,
    setup,
    styled,
)

NEEDED = ("gamma", "loss", "train_accuracy", "lr", "lanczos_eigenvalues")

Zoom = tuple[int, int] | str | None


def _gamma(ax: Axes, d: xr.Dataset) -> None:
    for c in d["class_index"].values:
        ax.plot(d["step"], d["gamma"].sel(class_index=c), lw=1, label=f"Γ$_{c}$")
    ax.set_ylabel("Γ$_i$(t)")
    legend_outside(ax, title="class i")


def _loss(ax: Axes, d: xr.Dataset) -> None:
    ax.plot(d["step"], d["loss"], lw=0.8)
    ax.set_ylabel("F(t)")


def _loss_change(ax: Axes, d: xr.Dataset) -> None:
    steps = d["step"].values
    lag = int(np.min(np.diff(steps))) if steps.size > 1 else 1
    change = d["loss"].diff("step")
    ax.plot(change["step"], change, ".", ms=1.2, rasterized=True)
    ax.set_ylabel(f"F(t) − F(t−{lag})" if lag > 1 else "F(t) − F(t−1)")


def _accuracy(ax: Axes, d: xr.Dataset) -> None:
    ax.plot(d["step"], d["train_accuracy"], lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("train accuracy")


def sampling(steps: xr.DataArray) -> str:
    """How often a sparse series was recorded, for its legend: ``12 samples, every 5 steps``."""
    n = steps.size
    every = int(np.min(np.diff(steps.values))) if n > 1 else 0
    return f"{n} samples, every {every} steps" if every else f"{n} sample"


def _sparse_style(steps: xr.DataArray) -> dict[str, Any]:
    """Markers on a series with few samples in view, so that a reader sees where they are."""
    return {"marker": ".", "ms": 3} if steps.size < 40 else {}


def _hessian(ax: Axes, d: xr.Dataset, n_eigenvalues: int) -> None:
    eig = d["lanczos_eigenvalues"]
    style = _sparse_style(d["lanczos_step"])
    for k in range(min(n_eigenvalues, eig.sizes["lanczos_index"])):
        ax.plot(d["lanczos_step"], eig.isel(lanczos_index=k), lw=0.8, label=f"λ$_{k + 1}$", **style)
    draw_threshold(ax, d["step"], trace_stability_factor(d) / d["lr"], trace_stability_factor(d))
    if "bifurcation_mean_lambda_onset" in d:
        threshold = float(d["bifurcation_mean_lambda_onset"])
        if np.isfinite(threshold):
            ax.axhline(threshold, color="0.5", ls=":", lw=1, label="mean λ$_1$ at onset")
    ax.set_ylabel("Hessian λ")
    legend_outside(ax, title=sampling(d["lanczos_step"]))


def _ntk(ax: Axes, d: xr.Dataset) -> None:
    steps = d["ntk_step"]
    top = d["ntk_eigenvalues"].isel(ntk_index=0)
    ax.plot(steps, top, lw=0.8, color="C4", label="λ$_{max}$", **_sparse_style(steps))
    ax.set_ylabel("NTK λ$_{max}$")
    legend_outside(ax, title=sampling(steps))


def events(ds: xr.Dataset, member: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end steps of the member's detected instabilities (empty without the detector)."""
    if "bifurcation_start" not in ds:
        return np.array([]), np.array([])
    mine = ds["bifurcation_member"].values == member
    return ds["bifurcation_start"].values[mine], ds["bifurcation_end"].values[mine]


def _window(ds: xr.Dataset, member: int, zoom: Zoom) -> tuple[int, int] | None:
    if zoom is None or isinstance(zoom, tuple):
        return zoom
    if zoom != "auto":
        raise DlfError(f"zoom must be 'auto' or (start, stop), got {zoom!r}")
    starts, ends = events(ds, member)
    if starts.size == 0:
        raise DlfError(
            f"zoom 'auto' needs a detected instability of member {member}; "
            "run with analyzers: {lanczos: {}, bifurcation: {}} or give the zoom as START:STOP"
        )
    start, end = int(starts[0]), int(ends[0])
    margin = max((end - start) // 2, 50)
    steps = ds["step"].values  # the window stays within the recorded steps (and its title too)
    return max(start - margin, int(steps[0])), min(end + margin, int(steps[-1]))


def _restrict(d: xr.Dataset, window: tuple[int, int] | None) -> xr.Dataset:
    if window is None:
        return d
    sl = slice(*window)
    return d.sel({dim: sl for dim in ("step", "lanczos_step", "ntk_step") if dim in d.dims})


@styled
def dynamics(ds: xr.Dataset, member: int = 0, zoom: Zoom = None, n_eigenvalues: int = 3) -> Figure:
    """Panels of one member's training; ``zoom`` (start, stop) or "auto" adds a zoomed column.

    "auto" zooms on the member's first detected instability.
    """
    require(ds, NEEDED, "dynamics")
    if not 0 <= member < ds.sizes["member"]:
        raise DlfError(f"member {member} does not exist; this trace has {ds.sizes['member']}")
    window = _window(ds, member, zoom)
    d = ds.isel(member=member)
    panels: list[Callable[[Axes, xr.Dataset], None]] = [
        _gamma,
        _loss,
        _loss_change,
        _accuracy,
        lambda ax, x: _hessian(ax, x, n_eigenvalues),
    ]
    if "ntk_eigenvalues" in ds:
        panels.append(_ntk)
    columns = [None] if window is None else [None, window]
    fig, axes = new_figure(
        len(panels), len(columns), size=(7.5 * len(columns), 1.5 * len(panels) + 1.0), sharex="col"
    )
    starts, ends = events(ds, member)
    for col, win in enumerate(columns):
        part = _restrict(d, win)
        for row, panel in enumerate(panels):
            ax = axes[row, col]
            panel(ax, part)
            if row > 0:
                lo, hi = (-np.inf, np.inf) if win is None else win
                for steps, style in ((starts, ONSET), (ends, END)):
                    for s in steps[(steps >= lo) & (steps <= hi)]:
                        ax.axvline(s, **style)
        axes[-1, col].set_xlabel("step t")
        title = "whole run" if win is None else f"zoom: steps {win[0]}–{win[1]}"
        axes[0, col].set_title(title)
    if starts.size:
        marks = [
            Line2D([], [], **ONSET, label="onset of an instability (bifurcation detector)"),
            Line2D([], [], **END, label="its end"),
        ]
        legend_below(fig, marks)
    fig.suptitle(
        f"Training dynamics of {run_name(ds)} (member {member}, seed {int(d['seed'])}): {setup(d)}"
    )
    return fig
