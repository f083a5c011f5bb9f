"""The landscape over one period of Γ, animated: ``dlf-study plot TRACE --figure landscape-movie``.

Each frame is a slice the landscape analyzer took on its ``every`` cadence: F on the plane of the
current top-2 Hessian eigenvectors around θ_t, Γ frozen at Γ(t), with the trajectory that
followed projected on that plane (the moving frame), on one colour scale for the whole movie.
Beside it, Γ_i(t) and λ₁·η/c over the period with a cursor at the frame's step, so a reader sees
the landscape tilt as Γ moves and the valley sharpen up to the edge of stability c/η.
Written as MP4 where ffmpeg is installed, else as GIF with Pillow (which matplotlib brings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib import animation
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from dlf.analysis.stability import trace_stability_factor
from dlf.errors import DlfError
from dlf.plots.landscape import (
    CENTRE,
    PATH,
    axis_names,
    contour_levels,
    edge_ratio,
    gamma_text,
    hessian_directions,
    loss_norm,
    slice_path,
)
from dlf.plots.style import LOSS_CMAP, THRESHOLD, plain_log_axis, require, run_name, setup, styled

NEEDED = (
    "landscape_loss",
    "landscape_step",
    "landscape_member",
    "landscape_trajectory",
    "landscape_eigenvalues",
    "gamma",
    "lr",
)
FPS = 8
DPI = 100
#: matplotlib writer, file suffix: the first one installed is used.
WRITERS = (("ffmpeg", "mp4"), ("pillow", "gif"))


@dataclass
class Movie:
    """A rendered-on-save animation and the file type its writer produces."""

    figure: Figure
    animation: animation.FuncAnimation
    writer: str
    suffix: str
    frames: int

    def save(self, path: Path) -> None:
        """Render every frame into ``path`` (its suffix should be :attr:`suffix`); a part file is
        renamed into place at the end, so an interrupted render leaves no half-written movie."""
        part = path.with_name(f".{path.stem}.part.{self.suffix}")
        try:
            self.animation.save(part, writer=self.writer, fps=FPS, dpi=DPI)
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)


def movie_writer() -> tuple[str, str]:
    """(writer, suffix) of the first installed animation writer, or a one-line error."""
    for name, suffix in WRITERS:
        if animation.writers.is_available(name):
            return name, suffix
    raise DlfError(
        "figure 'landscape-movie' needs ffmpeg (MP4) or Pillow (GIF) and neither is installed: "
        "pip install pillow"
    )


def movie_frames(ds: xr.Dataset, member: int) -> list[int]:
    """The member's cadence slices over one period of Γ from the first, in step order."""
    require(ds, NEEDED, "landscape-movie")
    if not hessian_directions(ds):
        raise DlfError(
            "figure 'landscape-movie' needs slices along Hessian eigenvectors; "
            "set analyzers.landscape.directions: hessian"
        )
    cadence = ds["landscape_cadence"].values if "landscape_cadence" in ds else True
    mine = np.flatnonzero((ds["landscape_member"].values == member) & cadence)
    if mine.size < 2:
        raise DlfError(
            f"figure 'landscape-movie' needs two or more slices of member {member} on a cadence; "
            "run with analyzers: {lanczos: {}, landscape: {slice_every: 20, members: "
            f"[{member}]}}"
        )
    mine = mine[np.argsort(ds["landscape_step"].values[mine], kind="stable")]
    steps = ds["landscape_step"].values[mine]
    period = float(ds["period"].values[member])
    return list(mine[steps < steps[0] + period])


def _side_panels(ds: xr.Dataset, frames: list[int], member: int, axes) -> list:
    """Γ_i(t) and λ₁·η/c over the movie's steps, each with a cursor line; returns the cursors."""
    steps = ds["landscape_step"].values[frames]
    gamma_ax, edge_ax = axes
    gamma = ds["gamma"].isel(member=member).sel(step=slice(steps[0], steps[-1]))
    for c in gamma["class_index"].values:
        gamma_ax.plot(gamma["step"], gamma.sel(class_index=c), lw=1, label=f"Γ$_{c}$")
    gamma_ax.set_ylabel("Γ$_i$(t)")
    gamma_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    c = trace_stability_factor(ds)
    ratio = [edge_ratio(ds, ds.isel(landscape_slice=i)) for i in frames]
    edge_ax.plot(steps, ratio, ".-", lw=0.8, ms=3, color="C0", label=f"λ$_1$·η/{c:g}")
    edge_ax.axhline(1.0, **THRESHOLD, label=f"λ$_1$ = {c:g}/η")
    edge_ax.set_ylabel(f"λ$_1$·η/{c:g}")
    edge_ax.set_xlabel("step t")
    edge_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return [ax.axvline(steps[0], color="0.3", lw=1.2) for ax in axes]


def _slice_axes(ax: Axes, s: xr.Dataset, norm: Normalize) -> tuple[QuadMesh, Line2D]:
    """A slice's colour mesh, θ_t and an (empty) path line on ``ax``."""
    mesh = ax.pcolormesh(
        s["landscape_a"],
        s["landscape_b"],
        s["landscape_loss"].transpose("landscape_b", "landscape_a"),
        shading="auto",
        cmap=LOSS_CMAP,
        norm=norm,
        rasterized=True,
    )
    (path,) = ax.plot([], [], "o-", **PATH, label="θ$_{t+k}$ that follow, on the plane")
    ax.plot(0, 0, **CENTRE, label="θ$_t$")
    ax.grid(False)
    return mesh, path


def _zoom_on(inset: Axes, box: Rectangle, path: np.ndarray, radius: float) -> None:
    """Point the inset (and its outline on the slice) at the path, however small it is."""
    lo, hi = path.min(axis=0), path.max(axis=0)
    half = max(0.6 * float((hi - lo).max()), 0.03 * radius)
    centre = (lo + hi) / 2
    inset.set_xlim(centre[0] - half, centre[0] + half)
    inset.set_ylim(centre[1] - half, centre[1] + half)
    box.set_bounds(centre[0] - half, centre[1] - half, 2 * half, 2 * half)


class _SlicePanel:
    """The slice with its path, and an inset that magnifies the path, redrawn frame by frame."""

    def __init__(self, ax: Axes, s: xr.Dataset, norm: Normalize, levels: np.ndarray) -> None:
        self.ax, self.levels = ax, levels
        self.mesh, self.path = _slice_axes(ax, s, norm)
        self.inset = ax.inset_axes((0.66, 0.66, 0.32, 0.32))
        self.inset_mesh, self.inset_path = _slice_axes(self.inset, s, norm)
        self.inset.set_xticks([])
        self.inset.set_yticks([])
        self.box = Rectangle((0, 0), 0, 0, fill=False, edgecolor="white", lw=0.8)
        ax.add_patch(self.box)
        self.contours: list = []

    def show(self, s: xr.Dataset, radius: float) -> None:
        """Slice ``s``: its colours, contour lines and path; the inset follows the path."""
        grid = s["landscape_loss"].transpose("landscape_b", "landscape_a")
        for mesh in (self.mesh, self.inset_mesh):
            mesh.set_array(grid.values.ravel())
        for old in self.contours:
            old.remove()
        self.contours = [
            self.ax.contour(
                s["landscape_a"],
                s["landscape_b"],
                grid,
                levels=self.levels,
                colors="white",
                linewidths=0.4,
            )
        ]
        points = slice_path(s)
        for line in (self.path, self.inset_path):
            line.set_data(*points.T)
        _zoom_on(self.inset, self.box, points, radius)


@styled
def landscape_movie(ds: xr.Dataset, member: int = 0) -> Movie:
    """The animation of ``member``'s cadence slices over one period (see :meth:`Movie.save`)."""
    writer, suffix = movie_writer()
    frames = movie_frames(ds, member)
    norm = loss_norm(ds["landscape_loss"].isel(landscape_slice=frames).values)
    first, second, sentence = axis_names(ds)
    fig = Figure(figsize=(9.6, 5.4), layout="constrained")
    left, right = fig.subfigures(1, 2, squeeze=False, width_ratios=(1.2, 1.0))[0]
    ax = left.subplots()
    panel = _SlicePanel(ax, ds.isel(landscape_slice=frames[0]), norm, contour_levels(norm))
    bar = left.colorbar(
        panel.mesh, ax=ax, label="F(θ$_t$ + a·" + first + " + b·" + second + "; Γ(t))"
    )
    if isinstance(norm, LogNorm):
        plain_log_axis(bar.ax.yaxis)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2, borderaxespad=0.0)
    ax.set_xlabel(f"a (along {first}); inset: the path magnified")
    ax.set_ylabel(f"b (along {second})")
    cursors = _side_panels(ds, frames, member, right.subplots(2, 1, sharex=True))
    c = trace_stability_factor(ds)
    radius = float(ds["landscape_a"].max())
    fig.suptitle(
        f"Loss landscape over one period of Γ: {run_name(ds)}, member {member}\n{setup(ds)}\n"
        f"{sentence} (a moving frame); one colour scale for the whole movie"
    )

    def draw(frame: int) -> None:
        s = ds.isel(landscape_slice=frames[frame])
        panel.show(s, radius)
        step = int(s["landscape_step"])
        for cursor in cursors:
            cursor.set_xdata([step, step])
        left.suptitle(
            f"t = {step}   {gamma_text(ds, s)}   λ$_{{max}}$·η/{c:g} = {edge_ratio(ds, s):.2f}",
            fontsize="medium",
        )

    draw(0)
    fig.draw_without_rendering()  # lay the frame out once: the layout then stays fixed,
    fig.set_layout_engine("none")  # which halves the time each frame takes to render
    movie = animation.FuncAnimation(fig, draw, frames=len(frames), cache_frame_data=False)
    return Movie(fig, movie, writer, suffix, len(frames))
