"""Test a dlf plugin without installing it: tiny ensemble runs, their traces, dense Hessians.

What pytest's ``pytester`` is for pytest plugin authors. Enable the fixtures in a test suite's
``conftest.py`` with ``pytest_plugins = ["dlf.testing"]`` (as ``pytester`` is enabled); the
helpers (:func:`run_tiny`, :func:`dense_hessian`, …) work without pytest as well.

A plugin object (a module or any object with ``@dlf.hookimpl`` methods, ``dlf_register``
included) or an :class:`~dlf.Analyzer` subclass is registered with a plugin manager of its own,
built for that run through pluggy's ``register`` beside the installed plugins: nothing is
installed, and the process's shared plugins are left as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr

from dlf.config import RunConfig
from dlf.engine.run import execute, prepare
from dlf.engine.trace import open_trace
from dlf.hooks.analyzer import Analyzer
from dlf.hooks.manager import Plugins, load_plugins, plugins_with, refresh_plugins
from dlf.hooks.registries import Registries
from dlf.hooks.specs import hookimpl
from dlf.hooks.state import RunContext
from dlf.numerics.objective import Objective

__all__ = [
    "DlfTester",
    "dense_hessian",
    "dlf_tester",
    "load_plugins",
    "refresh_plugins",
    "registering",
    "run_context",
    "run_tiny",
    "tiny_config",
    "tiny_raw",
]

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "spiral", "points_per_class": 20},
    "model": {"width": 8, "dtype": "float64"},
    "loss": {"name": "dce"},
    "schedule": {"amplitude": [1, 5], "period": 20},
    "train": {"steps": 60, "seeds": 2, "eval_every": 10},
    "output": {"progress": "never"},
}


def tiny_raw(root: str | Path, **sections: Any) -> dict[str, Any]:
    """The raw (YAML-shaped) config of :func:`tiny_config`, for tests of config handling: a
    fresh copy, so a test may change it in place."""
    raw: dict[str, Any] = copy.deepcopy(TINY)
    raw["output"]["root"] = str(root)
    for key, value in sections.items():
        current = raw.get(key)
        raw[key] = {**current, **value} if isinstance(value, dict) and current else value
    return raw


def tiny_config(root: str | Path, **sections: Any) -> RunConfig:
    """A run of seconds writing under ``root``: 3 spiral arms of 20 points, a width-8 MLP in
    float64, DCE with amplitudes 1 and 5, 60 steps, 2 seeds. A section given as a dict updates
    the default one key by key (``train={"steps": 12}``); anything else replaces it."""
    return RunConfig.model_validate(tiny_raw(root, **sections))


class _Registers:
    """A plugin object that registers analyzer classes by name (what an entry point's
    ``dlf_register`` would do)."""

    def __init__(self, analyzers: Mapping[str, type[Analyzer]]) -> None:
        self.analyzers = dict(analyzers)

    @hookimpl
    def dlf_register(self, registries: Registries) -> None:
        for name, cls in self.analyzers.items():
            registries.analyzers.add(name, cls)


def registering(**analyzers: type[Analyzer]) -> object:
    """A plugin object that registers each analyzer class under its keyword's name."""
    return _Registers(analyzers)


def _plugins(config: RunConfig, plugins: tuple[object, ...]) -> Plugins:
    return plugins_with(plugins, config.plugins) if plugins else load_plugins(config.plugins)


def run_tiny(config: RunConfig, *plugins: object) -> xr.Dataset:
    """Run ``config`` with ``plugins`` (plugin objects or modules) registered beside the
    installed ones; the trace, opened (xarray, NetCDF through ``netcdf4``)."""
    result = execute(config, plugins=_plugins(config, plugins))
    return open_trace(result.path)


def run_context(config: RunConfig, *plugins: object) -> RunContext:
    """The :class:`~dlf.RunContext` a run of ``config`` would get (data, objective, analyzers
    built), without running it: what a test compares an analyzer's records with."""
    return prepare(config, plugins=_plugins(config, plugins))[2]


def dense_hessian(
    objective: Objective, theta: torch.Tensor, gamma: torch.Tensor | None = None
) -> torch.Tensor:
    """The Hessians ``(member, n, n)`` of F(θ; Γ) for every row of ``theta (member, n)``
    (``gamma (member, class)``; None: the static loss), by ``torch.func.hessian`` of the loss
    written out per member: a reference independent of the curvature helper, for tiny models."""
    ones = torch.ones(1, objective.n_classes, dtype=theta.dtype, device=theta.device)
    hessians = []
    for m in range(theta.shape[0]):
        loss = objective.static if gamma is None else objective.loss
        weights = ones if gamma is None else gamma[m : m + 1]

        def f(row: torch.Tensor, loss: Any = loss, weights: torch.Tensor = weights) -> Any:
            return loss(objective.model.forward(row[None], objective.x), objective.y, weights)[0]

        hessians.append(torch.func.hessian(f)(theta[m]))
    return torch.stack(hessians)


class DlfTester:
    """The ``dlf_tester`` fixture: tiny runs writing under the test's temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs = 0

    def config(self, **sections: Any) -> RunConfig:
        """:func:`tiny_config` under a folder of its own for each config asked for."""
        self._runs += 1
        return tiny_config(self.root / f"run{self._runs}", **sections)

    def run(self, *plugins: object, **sections: Any) -> xr.Dataset:
        """The trace of a tiny run with ``plugins`` registered (see :func:`run_tiny`)."""
        return run_tiny(self.config(**sections), *plugins)

    def run_analyzer(
        self,
        name: str,
        analyzer: type[Analyzer],
        options: Mapping[str, Any] | None = None,
        **sections: Any,
    ) -> xr.Dataset:
        """The trace of a tiny run with the class ``analyzer`` registered as ``name`` and
        configured with ``options`` (its defaults where None)."""
        plugin = registering(**{name: analyzer})
        return self.run(plugin, analyzers={name: dict(options or {})}, **sections)


@pytest.fixture
def dlf_tester(tmp_path: Path) -> Iterator[DlfTester]:
    """Tiny ensemble runs with a plugin registered without installing it (:class:`DlfTester`)."""
    yield DlfTester(tmp_path)
