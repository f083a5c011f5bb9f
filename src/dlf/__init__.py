"""dlf-study: ensembles trained on dynamical loss functions, and the tools to look inside them.

The public API that plugins and notebooks use is what this module exports.
"""

from dlf.threads import bound_spinning

bound_spinning()  # before anything loads torch's OpenMP runtime (dlf.threads says why)

from pathlib import Path

import xarray as xr

from dlf.config import Member, RunConfig, load_config
from dlf.curvature.helper import Curvature
from dlf.dynamical_loss import DynamicalLoss
from dlf.engine.run import RunResult, execute
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError, DlfError, PluginError
from dlf.hooks.analyzer import Analyzer, AnalyzerOptions
from dlf.hooks.registries import Registries
from dlf.hooks.specs import hookimpl, hookspec
from dlf.hooks.state import EvalState, RunContext, StepState
from dlf.numerics.data import Dataset
from dlf.numerics.objective import Objective


def open_study(path: str | Path) -> xr.Dataset:
    """Open a min-width study's ``study.nc`` (or its directory) as an xarray Dataset."""
    from dlf.studies.search import open_study as _open_study  # Optuna is imported only when needed

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
