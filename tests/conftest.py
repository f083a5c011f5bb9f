"""Shared fixtures: tiny, fast configs in float64."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import pytest

pytest_plugins = ["dlf.testing"]  # the plugin authors' fixtures (dlf_tester), tested here

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _plugins_discovered_afresh():
    """Plugins are loaded once per process; tests install and remove plugins, so each test
    starts from a fresh discovery."""
    from dlf.hooks.manager import refresh_plugins

    refresh_plugins()
    yield
    refresh_plugins()


def tiny_config(tmp_path, **sections: Any) -> dict[str, Any]:
    """A raw config for a seconds-long run writing under ``tmp_path`` (``dlf.testing``'s)."""
    from dlf.testing import tiny_raw

    return tiny_raw(tmp_path, **sections)


def study_raw(root: Path, name: str = "tiny", **search: Any) -> dict[str, Any]:
    """A seconds-long study: 3 widths, 2 seeds, 2 trials per width, 2 trials per run."""
    raw = tiny_config(root, name=name, train={"steps": 80, "eval_every": 20})
    del raw["schedule"], raw["model"]["width"], raw["train"]["seeds"]
    raw["search"] = {
        "target": 0.6,
        "seeds": 2,
        "width": {"low": 2, "high": 8, "per_octave": 1},
        "amplitude": {"low": 2, "high": 10},
        "period": {"low": 10, "high": 40},
        "trials_per_width": 2,
        "batch": 2,
        "trials": 6,
        "pruner": {"startup_trials": 2},
        **search,
    }
    return raw


@pytest.fixture
def make_config(tmp_path):
    from dlf.config import RunConfig

    def make(**sections: Any) -> RunConfig:
        return RunConfig.model_validate(tiny_config(tmp_path, **sections))

    return make
