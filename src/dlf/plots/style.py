"""What every figure shares: one look (sizes, fonts, one colour per loss, the edge-of-stability
line drawn one way), a display-free matplotlib Figure, titles that name the set-up, legends kept
off the data, and one-line errors.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``, so
drawing never touches a GUI backend (saving uses Agg) and a notebook's own backend is left alone.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

from dlf.analysis.stability import threshold_label
from dlf.errors import DlfError

P = ParamSpec("P")
R = TypeVar("R")

#: Font sizes (points) of every figure: readable at the widths the figures are saved at.
RC = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10.5,
}
PALETTE = sns.color_palette("colorblind")
#: One colour per loss, the same in every figure (``plot`` and the studies' reports): a static
#: loss and its dynamical counterparts in contrasting colours.
LOSS_COLORS = {
    "ce": PALETTE[0],
    "dce": PALETTE[1],
    "mse": PALETTE[2],
    "dmse1": PALETTE[3],
    "dmse2": PALETTE[4],
}
#: The edge-of-stability line c/η (2/η for gradient descent), drawn this way everywhere.
THRESHOLD: dict[str, Any] = {"color": "k", "ls": "--", "lw": 1.1, "zorder": 1.5}
#: Detected instabilities (bifurcation detector) on time axes: onset and end.
ONSET: dict[str, Any] = {"color": PALETTE[2], "ls": "-.", "lw": 0.8, "alpha": 0.8}
END: dict[str, Any] = {"color": PALETTE[3], "ls": ":", "lw": 1.0, "alpha": 0.9}
#: Colour map of loss values (landscape slices and their movie).
LOSS_CMAP = "magma"

#: How to obtain a missing variable, by the analyzer prefix of its name.
HOW_TO_GET = {
    "lanczos": "run with analyzers: {lanczos: {}}",
    "ntk": "run with analyzers: {ntk: {}}",
    "bifurcation": "run with analyzers: {lanczos: {}, bifurcation: {}}",
    "landscape": "run with analyzers: {lanczos: {}, landscape: {steps: [...]}}",
}


def loss_color(name: str) -> tuple[float, float, float]:
    """The colour of a loss by name (case-insensitive; a label such as ``"DCE A=5 T=10"`` or
    ``"dce (dynamical)"`` takes its first word's); an unregistered loss gets a stable colour of
    the palette's remaining ones."""
    key = name.strip().lower().split(" ")[0] if name.strip() else name
    if key in LOSS_COLORS:
        return LOSS_COLORS[key]
    spare = PALETTE[len(LOSS_COLORS) :]
    return spare[zlib.crc32(key.encode()) % len(spare)]


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw under the package's style: seaborn white grid, the colour-blind palette, ``RC``."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with (
            sns.axes_style("whitegrid"),
            sns.plotting_context("paper", rc=RC),
            sns.color_palette("colorblind"),
        ):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **kw: Any):
    """A constrained-layout Figure and its axes array (always 2-D), not registered with pyplot."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def legend_outside(ax: Axes, **kw: Any) -> Legend:
    """The axes' legend to the right of its plot area, where it covers no data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def legend_below(fig: Figure, handles: list, **kw: Any) -> Legend:
    """A figure-wide legend in a row below the panels (constrained layout makes room)."""
    return fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), **kw)


def draw_threshold(ax: Axes, x: Any, y: Any, c: float, **kw: Any) -> None:
    """The edge-of-stability line c/η, labelled ``2/η`` (or ``c/η``) for legends."""
    ax.plot(x, y, label=threshold_label(c), **{**THRESHOLD, **kw})


def plain_log_axis(axis: Axis) -> None:
    """Plain-number tick labels (0.5, 1, 2, …) on a log axis, with enough of them to read a
    value off however narrow the range: 1-2-5 ticks, every integer multiple when these give
    fewer than three, and evenly spaced round values when even those do."""
    axis.axes.autoscale_view()
    lo, hi = sorted(axis.get_view_interval())
    locator: Locator = LogLocator(subs=(1.0, 2.0, 5.0))
    for candidate in (locator, LogLocator(subs=tuple(range(1, 10))), MaxNLocator(nbins=5)):
        locator = candidate
        if sum(lo <= t <= hi for t in candidate.tick_values(lo, hi)) >= 3:
            break
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def require(ds: xr.Dataset, names: Iterable[str], figure: str) -> None:
    """Raise a one-line :class:`DlfError` naming the first variable ``figure`` needs and lacks."""
    for name in names:
        if name not in ds.variables:
            if "member" not in ds.dims:  # a study's result (study.nc, threshold.nc), not a run
                raise DlfError(
                    f"figure {figure!r} is drawn from run traces, and a study's result file "
                    "holds none; plot the traces in the study's runs/ folder"
                )
            how = HOW_TO_GET.get(name.split("_", 1)[0], "it is written by every dlf-study run")
            raise DlfError(f"figure {figure!r} needs variable {name}; {how}")


def run_config(ds: xr.Dataset) -> dict[str, Any]:
    """The run's config stored in the trace (empty where the trace has none)."""
    try:
        return dict(json.loads(ds.attrs["config"]))
    except (KeyError, ValueError, TypeError):
        return {}


def run_name(ds: xr.Dataset) -> str:
    """The run's name from the trace's config attribute (falls back to its title)."""
    return str(run_config(ds).get("name", ds.attrs.get("title", "trace")))


def values_text(values: Any) -> str:
    """Distinct values as ``1`` or ``0.5, 1``, for titles."""
    return ", ".join(f"{v:g}" for v in sorted({float(v) for v in np.atleast_1d(values)}))


def setup(ds: xr.Dataset) -> str:
    """The set-up of a trace in a title's words: data, loss, width, η, A, T, steps, seeds."""
    config = run_config(ds)
    data = config.get("data", {}).get("name", "")
    parts = [
        f"{data}" if data else "",
        ds.attrs.get("loss_name", "").upper(),
        f"width {int(ds['width'])}" if "width" in ds else "",
        f"η = {values_text(ds['eta'].values)}" if "eta" in ds else "",
        f"A = {values_text(ds['amplitude'].values)}" if "amplitude" in ds else "",
        f"T = {values_text(ds['period'].values)}" if "period" in ds else "",
        f"{int(ds.attrs['total_steps'])} steps" if "total_steps" in ds.attrs else "",
    ]
    return ", ".join(p for p in parts if p)


def mean_sem(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, error of the mean and count of the finite values (sem 0 for a single value)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    n = finite.size
    if n == 0:
        return float("nan"), float("nan"), 0
    sem = float(finite.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(finite.mean()), sem, n
