"""What every figure shares: seaborn styling, a display-free matplotlib Figure, one-line errors.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``, so
drawing never touches a GUI backend (saving uses Agg) and a notebook's own backend is left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec

import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from dlf.errors import DlfError

P = ParamSpec("P")

#: How to obtain a missing variable, by the analyzer prefix of its name.
HOW_TO_GET = {
    "lanczos": "run with analyzers: {lanczos: {}}",
    "ntk": "run with analyzers: {ntk: {}}",
    "bifurcation": "run with analyzers: {lanczos: {}, bifurcation: {}}",
    "landscape": "run with analyzers: {lanczos: {}, landscape: {steps: [...]}}",
}


def styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw under the package's seaborn style (white grid, paper context, colour-blind palette)."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with (
            sns.axes_style("whitegrid"),
            sns.plotting_context("paper"),
            sns.color_palette("colorblind"),
        ):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **kw: Any):
    """A constrained-layout Figure and its axes array (always 2-D), not registered with pyplot."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def require(ds: xr.Dataset, names: Iterable[str], figure: str) -> None:
    """Raise a one-line :class:`DlfError` naming the first variable ``figure`` needs and lacks."""
    for name in names:
        if name not in ds.variables:
            how = HOW_TO_GET.get(name.split("_", 1)[0], "it is written by every dlf-study run")
            raise DlfError(f"figure {figure!r} needs variable {name}; {how}")


def run_name(ds: xr.Dataset) -> str:
    """The run's name from the trace's config attribute (falls back to its title)."""
    import json

    try:
        return str(json.loads(ds.attrs["config"])["name"])
    except (KeyError, ValueError, TypeError):
        return str(ds.attrs.get("title", "trace"))


def mean_sem(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, error of the mean and count of the finite values (sem 0 for a single value)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    n = finite.size
    if n == 0:
        return float("nan"), float("nan"), 0
    sem = float(finite.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(finite.mean()), sem, n
