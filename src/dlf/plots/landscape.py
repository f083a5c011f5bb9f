"""Landscape slices with the trajectory drawn on them (2024 Fig. 2, right; captions Fig. 3).

Each panel is F(θ_t + a·v₁ + b·v₂; Γ(t)) with Γ frozen at the slice's step t, around θ_t (the
cross), with the next positions θ_{t+1}, θ_{t+2}, … projected on (v₁, v₂) as dots joined by a
line: a period-2 bounce between the valley walls shows as points alternating across the valley.
All panels share one colour scale (logarithmic where F spans more than a decade) and one set of
contour levels, so that they can be compared over time; a path too small to see at the slice's
scale is repeated, magnified, in an inset. Slices taken only on the ``every`` cadence (the
movie's frames, ``landscape_cadence``) are left to ``landscape-movie`` when the trace has others.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dlf.analysis.stability import trace_stability_factor
from dlf.errors import DlfError
from dlf.plots.style import (
    LOSS_CMAP,
    legend_below,
    new_figure,
    plain_log_axis,
    require,
    run_name,
    setup,
    styled,
)

NEEDED = ("landscape_loss", "landscape_step", "landscape_member", "landscape_trajectory")
MAX_COLUMNS = 5
MAX_PANELS = 10
PATH: dict[str, Any] = {"color": "#35d0ff", "mec": "black", "mew": 0.4, "ms": 4, "lw": 0.9}
CENTRE: dict[str, Any] = {
    "marker": "X",
    "color": "white",
    "mec": "black",
    "mew": 0.8,
    "ms": 8,
    "ls": "",
}
SMALL_PATH = 0.12  # a path spanning less than this fraction of the slice gets a magnified inset
DIRECTIONS = {
    "hessian": ("v", "v₁, v₂: the top-2 Hessian eigenvectors at t"),
    "random": ("d", "d₁, d₂: filter-normalised random directions"),
    "pca": ("d", "d₁, d₂: top-2 principal directions of the recent trajectory"),
}


def loss_norm(values: np.ndarray) -> Normalize:
    """One colour scale for all of ``values``: logarithmic when F > 0 spans over a decade."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DlfError("figure 'landscape' has no finite loss values to draw")
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > 10:
        return LogNorm(lo, hi)
    return Normalize(lo, hi if hi > lo else lo + 1)


def contour_levels(norm: Normalize, n: int = 9) -> np.ndarray:
    """Contour levels shared by every panel, evenly spaced on the colour scale."""
    lo, hi = cast(float, norm.vmin), cast(float, norm.vmax)
    if isinstance(norm, LogNorm):
        return np.geomspace(lo, hi, n + 2)[1:-1]
    return np.linspace(lo, hi, n + 2)[1:-1]


def axis_names(ds: xr.Dataset) -> tuple[str, str, str]:
    """Labels of the two directions and the sentence explaining them."""
    kind = str(ds["landscape_loss"].attrs.get("directions", "hessian"))
    letter, sentence = DIRECTIONS.get(kind, DIRECTIONS["hessian"])
    return f"{letter}$_1$", f"{letter}$_2$", sentence


def hessian_directions(ds: xr.Dataset) -> bool:
    """Whether the slices lie along Hessian eigenvectors (their curvatures are then λ₁, λ₂)."""
    return str(ds["landscape_loss"].attrs.get("directions", "hessian")) == "hessian"


def slice_path(s: xr.Dataset) -> np.ndarray:
    """(a, b) of θ_t (the origin) and of the recorded θ_{t+k} that followed: ``(1 + k, 2)``."""
    future = s["landscape_trajectory"].transpose("landscape_k", "landscape_coord").values
    return np.vstack([[0.0, 0.0], future[np.isfinite(future).all(axis=1)]])


def edge_ratio(ds: xr.Dataset, s: xr.Dataset) -> float:
    """λ₁·η/c at the slice (1: the top curvature sits on the edge of stability c/η)."""
    step, member = int(s["landscape_step"]), int(s["landscape_member"])
    eta = float(ds["lr"].isel(member=member).sel(step=step, method="nearest"))
    return float(s["landscape_eigenvalues"][0]) * eta / trace_stability_factor(ds)


def gamma_text(ds: xr.Dataset, s: xr.Dataset) -> str:
    """Γ(t) of the slice's member at its step, as ``Γ = (35, 1, 1)``."""
    gamma = ds["gamma"].isel(member=int(s["landscape_member"]))
    values = gamma.sel(step=int(s["landscape_step"]), method="nearest").values
    return "Γ = (" + ", ".join(f"{g:.3g}" for g in values) + ")"


def draw_slice(ax: Axes, s: xr.Dataset, norm: Normalize, levels: np.ndarray):
    """The slice's F as a colour mesh with contours, θ_t and its path; returns the mesh."""
    grid = s["landscape_loss"].transpose("landscape_b", "landscape_a")
    mesh = ax.pcolormesh(
        s["landscape_a"],
        s["landscape_b"],
        grid,
        shading="auto",
        cmap=LOSS_CMAP,
        norm=norm,
        rasterized=True,
    )
    ax.contour(
        s["landscape_a"],
        s["landscape_b"],
        grid,
        levels=levels,
        colors="white",
        linewidths=0.4,
        alpha=0.5,
    )
    path = slice_path(s)
    ax.plot(path[:, 0], path[:, 1], "o-", **PATH)
    ax.plot(0, 0, **CENTRE)
    ax.grid(False)
    return mesh


def _magnify(ax: Axes, s: xr.Dataset, norm: Normalize, levels: np.ndarray) -> None:
    """An inset around a path too small to see at the slice's scale."""
    path = slice_path(s)
    radius = float(s["landscape_a"].max())
    extent = float(np.ptp(path, axis=0).max()) if len(path) > 1 else 0.0
    if not 0 < extent < SMALL_PATH * 2 * radius:
        return
    inset = ax.inset_axes((0.66, 0.66, 0.32, 0.32))
    draw_slice(inset, s, norm, levels)
    centre, half = path.mean(axis=0), 0.7 * extent
    inset.set_xlim(centre[0] - half, centre[0] + half)
    inset.set_ylim(centre[1] - half, centre[1] + half)
    inset.set_xticks([])
    inset.set_yticks([])
    ax.indicate_inset_zoom(inset, edgecolor="white")


def panel_slices(ds: xr.Dataset) -> list[int]:
    """The slices drawn as panels, in step order: those not taken only for the movie."""
    chosen = np.arange(ds.sizes["landscape_slice"])
    if "landscape_cadence" in ds:
        listed = ds["landscape_listed"].values | (ds["landscape_onset"].values >= 0)
        chosen = np.flatnonzero(listed | ~ds["landscape_cadence"].values)
    if chosen.size == 0:
        chosen = np.arange(ds.sizes["landscape_slice"])
    order = chosen[np.argsort(ds["landscape_step"].values[chosen], kind="stable")]
    if order.size > MAX_PANELS:
        order = order[np.linspace(0, order.size - 1, MAX_PANELS).round().astype(int)]
    return list(order)


def legend_handles(ds: xr.Dataset) -> list[Line2D]:
    """What the cross and the dots are, for the legend above the panels."""
    k = ds.sizes.get("landscape_k", 0)
    return [
        Line2D([], [], **CENTRE, label="θ$_t$: the slice's centre"),
        Line2D([], [], marker="o", **PATH, label=f"θ$_{{t+1}}$ … θ$_{{t+{k}}}$ on the plane"),
    ]


@styled
def landscape(ds: xr.Dataset) -> Figure:
    """One panel per recorded slice (at most ten, in step order), on one colour scale."""
    require(ds, NEEDED, "landscape")
    chosen = panel_slices(ds)
    n = len(chosen)
    ncols = min(n, MAX_COLUMNS)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, size=(2.9 * ncols + 1.2, 2.8 * nrows + 1.2))
    norm = loss_norm(ds["landscape_loss"].isel(landscape_slice=chosen).values)
    levels = contour_levels(norm)
    first, second, sentence = axis_names(ds)
    several = np.unique(ds["landscape_member"].values[chosen]).size > 1
    for ax, i in zip(axes.flat, chosen, strict=False):
        s = ds.isel(landscape_slice=i)
        draw_slice(ax, s, norm, levels)
        _magnify(ax, s, norm, levels)
        who = f", member {int(s['landscape_member'])}" if several else ""
        title = f"t = {int(s['landscape_step'])}{who}"
        if hessian_directions(ds) and "landscape_eigenvalues" in ds and "lr" in ds:
            title += f"\nλ$_1$·η/{trace_stability_factor(ds):g} = {edge_ratio(ds, s):.2f}"
        ax.set_title(title)
        ax.set_xlabel(f"a (along {first}, parameter units)")
        ax.set_ylabel(f"b (along {second})")
    for ax in axes.flat[n:]:
        ax.remove()
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=LOSS_CMAP),
        ax=axes[np.isin(axes, fig.axes)].tolist(),
        label="F(θ$_t$ + a·" + first + " + b·" + second + "; Γ(t))",
        shrink=0.9,
    )
    if isinstance(norm, LogNorm):
        plain_log_axis(bar.ax.yaxis)
    legend_below(fig, legend_handles(ds))
    fig.suptitle(
        f"Loss landscape of {run_name(ds)} around θ$_t$, Γ frozen at Γ(t): {setup(ds)}\n"
        f"{sentence}; one colour scale for all panels"
    )
    return fig
