"""The hook events of dlf-study: what the core announces and what plugins may contribute.

Plugins implement these with ``@dlf.hookimpl``. A plugin module found through the ``dlf``
entry-point group usually implements :func:`dlf_register` to add analyzers, data sets, models,
losses or schedules. Analyzer *objects* (one fresh set per run) implement the run-time events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import xarray as xr

    from dlf.hooks.registries import Registries
    from dlf.hooks.state import EvalState, RunContext, StepState

hookspec = pluggy.HookspecMarker("dlf")
hookimpl = pluggy.HookimplMarker("dlf")


@hookspec
def dlf_register(registries: Registries) -> None:
    """Add data sets, models, losses, schedules or analyzers to the registries.

    Called once when the plugin manager is built, for every plugin module.
    """


@hookspec(historic=True)
def dlf_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of your own (``pluginmanager.add_hookspecs(module)``), so that
    other plugins can implement events your plugin announces (as pytest's ``pytest_addhooks``).

    Called for every plugin as it is registered, before :func:`dlf_register`.
    """


@hookspec
def dlf_run_start(run: RunContext) -> None:
    """A run is about to take its first step; ``run`` describes members, data and model."""


@hookspec
def dlf_step_end(state: StepState) -> None:
    """Step ``state.step`` has evaluated F and its gradient at θ_t; θ is updated after this returns.

    Only analyzers that are due at this step (``Analyzer.due``) are called; with none due the
    trainer does not even build the state.
    """


@hookspec
def dlf_evaluate(state: EvalState) -> None:
    """Validation metrics were computed at ``state.step`` (at the ``train.eval_every`` cadence)."""


@hookspec
def dlf_run_end(run: RunContext) -> None:
    """The run finished (or stopped early because every member diverged)."""


@hookspec
def dlf_trace_contribute(run: RunContext) -> Mapping[str, xr.DataArray | Any] | None:
    """Return the variables to add to the run's trace, keyed by name.

    Names must start with the analyzer's name and an underscore (``lanczos_eigenvalues``), and
    so must the dimensions and coordinates it adds (``lanczos_step``; the core's ``member``,
    ``step``, ``eval_step``, ``class_index`` are shared); the recorder refuses collisions.
    Called at every checkpoint and at the end of the run, so return what has been measured so
    far.
    """
