"""dlf-study: ensembles trained on dynamical loss functions, and the tools to look inside them.

The public API that plugins and notebooks use is what this module exports.
"""

from pathlib import Path

import xarray as xr

from dlf.analyzer import Analyzer, AnalyzerOptions
from dlf.config import Member, RunConfig, load_config
from dlf.curvature import Curvature
from dlf.data import Dataset
from dlf.dynamical_loss import DynamicalLoss
from dlf.errors import ConfigError, DlfError, PluginError
from dlf.hookspecs import hookimpl, hookspec
from dlf.objective import Objective
from dlf.registry import Registries
from dlf.run import RunResult, execute
from dlf.state import EvalState, RunContext, StepState
from dlf.trace import open_trace


def open_study(path: str | Path) -> xr.Dataset:
    """Open a min-width study's ``study.nc`` (or its directory) as an xarray Dataset."""
    from dlf.search import open_study as _open_study  # Optuna is imported only when needed

    return _open_study(path)


__version__ = "0.1.0"

__all__ = [
    "Analyzer",
    "AnalyzerOptions",
    "ConfigError",
    "Curvature",
    "Dataset",
    "DlfError",
    "DynamicalLoss",
    "EvalState",
    "Member",
    "Objective",
    "PluginError",
    "Registries",
    "RunConfig",
    "RunContext",
    "RunResult",
    "StepState",
    "execute",
    "hookimpl",
    "hookspec",
    "load_config",
    "open_study",
    "open_trace",
]
