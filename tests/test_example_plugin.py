"""The plugin examples of docs/plugins.md work as documented: pip installs each (into a temporary
folder), dlf-study finds it through its entry point, and the example's own tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
