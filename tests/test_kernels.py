"""The C kernels shipped as package data: readable, warning-free, cached per source and CPU."""

import subprocess

import pytest
import torch

from dlf import kernels

NAMES = ["mlp_step", "mlp_hvp"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_builds_without_a_single_warning(tmp_path, name, dtype):
    """-Wall -Wextra -Wpedantic -Werror: the source stays clean on this compiler."""
    if kernels.command(dtype) is None:
        pytest.skip("no C compiler on this machine")
    output = tmp_path / f"{name}.so"
    try:
        kernels.build(name, dtype, output, extra=("-Wpedantic", "-Werror"))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{name} ({dtype}) does not build cleanly:\n{exc.stderr}")
    assert output.stat().st_size > 0


def test_a_kernel_is_cached_per_source_and_machine_and_loaded_once(tmp_path, monkeypatch):
    if kernels.command(torch.float64) is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernels.load.cache_clear()
    try:
        first = kernels.load("mlp_step", torch.float64)
        assert first is not None and first is kernels.load("mlp_step", torch.float64)
        (built,) = (tmp_path / "dlf-study").glob("mlp_step_f64_*.so")
        assert kernels.load("mlp_step", torch.float16) is None  # no such build
    finally:
        kernels.load.cache_clear()
    assert built.exists()


def test_the_source_ships_with_the_package():
    assert "SUFFIX" in kernels.source("mlp_step")  # read through importlib.resources
