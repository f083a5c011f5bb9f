"""The plugin API: everything an analyzer or a registering plugin imports, in one module.

Plugins (the built-in ones in ``plugins/`` as much as a third party's) import only ``dlf`` and
``dlf.plugin``; CI enforces this with import-linter contracts (see ``pyproject.toml``). A name
here is public and changes only with a deprecation period.

Events (hook specifications, implemented with ``@hookimpl``): :func:`dlf_register`,
:func:`dlf_addhooks`, :func:`dlf_run_start`, :func:`dlf_step_end`, :func:`dlf_evaluate`,
:func:`dlf_run_end`, :func:`dlf_trace_contribute` (:mod:`dlf.hooks.specs`).
"""

from dlf.analysis import (
    BifurcationDetector,
    BifurcationSettings,
    Event,
    events_dataset,
    find_bifurcations,
    stability_factor,
)
from dlf.curvature.cadence import AdaptiveCadence
from dlf.curvature.helper import DEFAULT_MAX_ITER, DEFAULT_TOL, Curvature
from dlf.curvature.lanczos import LanczosResult
from dlf.curvature.ntk import choose_method as choose_ntk_method
from dlf.curvature.tracker import LambdaMaxTracker
from dlf.errors import ConfigError, DlfError, PluginError
from dlf.hooks.analyzer import Analyzer, AnalyzerOptions
from dlf.hooks.registries import DatasetEntry, ModelEntry, Registries, Registry
from dlf.hooks.specs import hookimpl, hookspec
from dlf.hooks.state import EvalState, RunContext, StepState
from dlf.numerics.data import Dataset
from dlf.numerics.losses import Loss
from dlf.numerics.models import MLP, ModuleModel
from dlf.numerics.objective import EnsembleModel, Objective

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_TOL",
    "MLP",
    "AdaptiveCadence",
    "Analyzer",
    "AnalyzerOptions",
    "BifurcationDetector",
    "BifurcationSettings",
    "ConfigError",
    "Curvature",
    "Dataset",
    "DatasetEntry",
    "DlfError",
    "EnsembleModel",
    "EvalState",
    "Event",
    "LambdaMaxTracker",
    "LanczosResult",
    "Loss",
    "ModelEntry",
    "ModuleModel",
    "Objective",
    "PluginError",
    "Registries",
    "Registry",
    "RunContext",
    "StepState",
    "choose_ntk_method",
    "events_dataset",
    "find_bifurcations",
    "hookimpl",
    "hookspec",
    "stability_factor",
]
