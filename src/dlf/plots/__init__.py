"""Figures of the papers, drawn from dlf-study traces: plain functions for notebooks, and the
``dlf-study plot`` command.

Every figure function takes xarray Dataset(s) (``dlf.open_trace``) and returns a matplotlib
:class:`~matplotlib.figure.Figure`; data a figure needs but lacks raises a one-line
:class:`dlf.DlfError` naming the variable and the analyzer that writes it.
"""

from dlf.plots.command import FIGURES, cli_plot, load_traces
from dlf.plots.curves import Trial, trial_curves
from dlf.plots.dynamics import dynamics
from dlf.plots.landscape import landscape
from dlf.plots.movie import Movie, landscape_movie
from dlf.plots.phase import phase
from dlf.plots.sharpness import sharpness
from dlf.plots.threshold import threshold
from dlf.plots.width import width

__all__ = [
    "FIGURES",
    "Movie",
    "Trial",
    "cli_plot",
    "dynamics",
    "landscape",
    "landscape_movie",
    "load_traces",
    "phase",
    "sharpness",
    "threshold",
    "trial_curves",
    "width",
]
