"""The plugin examples of docs/plugins.md work as documented: pip installs each (into a temporary
folder), dlf-study finds it through its entry point, and the example's own tests pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "grad_norm_plugin"
RESNET = EXAMPLES / "resnet_plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install(EXAMPLE, tmp_path_factory)


@pytest.fixture(scope="module")
def resnet_site(tmp_path_factory) -> Path:
    return install(RESNET, tmp_path_factory)


def install(example: Path, tmp_path_factory) -> Path:
    """The example installed by pip, offline, into a folder of its own (built from a copy, so
    that the build leaves nothing in the repository)."""
    source = shutil.copytree(example, tmp_path_factory.mktemp("src") / example.name)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def with_site(site: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_installed_plugin_is_listed(site):
    listed = subprocess.run(
        [sys.executable, "-m", "dlf.cli", "plugins"],
        env=with_site(site),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "grad_norm                dlf-grad-norm 0.1.0 (entry point)" in listed
    assert "grad_norm                from grad_norm" in listed


def test_example_tests_pass_against_the_installed_plugin(site):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env=with_site(site),
        capture_output=True,
        text=True,
        cwd=site,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_model_plugin_is_listed_and_its_tests_pass(resnet_site):
    listed = subprocess.run(
        [sys.executable, "-m", "dlf.cli", "plugins"],
        env=with_site(resnet_site),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "resnet                   dlf-resnet 0.1.0 (entry point)" in listed
    assert "models:" in listed and "resnet                   from resnet" in listed
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(RESNET / "tests")],
        env=with_site(resnet_site),
        capture_output=True,
        text=True,
        cwd=resnet_site,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_model_plugin_runs_through_the_cli_with_lanczos_and_bifurcation(resnet_site, tmp_path):
    """``dlf-study run`` of the example's own config (shortened), the installed plugin's model
    found by name; the trace, opened with xarray, holds both analyzers' variables."""
    overrides = {
        "train.steps": 6,
        "train.seeds": 1,
        "train.batch_size": 16,
        "train.curvature_batch": 24,
        "analyzers.lanczos.every": 2,
        "data.val_fraction": 0.95,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "dlf.cli", "run", str(RESNET / "resnet.yaml"), *sets]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)],
        env=with_site(resnet_site),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with xr.open_dataset(tmp_path / "resnet_example" / "trace.nc") as ds:
        assert ds.attrs["status"] == "complete"
        assert json.loads(ds.attrs["config"])["model"]["name"] == "resnet"
        assert ds["lanczos_eigenvalues"].shape == (2, 3, 2)  # members (A = 1, 5), steps 0 2 4, k
        assert np.isfinite(ds["lanczos_eigenvalues"]).all()
        assert "3.8/η" in ds["bifurcation_ratio"].attrs["long_name"]
        assert {"bifurcation_count", "bifurcation_member"} <= set(ds.variables)
