"""C kernels shipped as source files (package data) and compiled for this machine on first use.

A kernel ``NAME.c`` beside this module is written once for a generic real type: it is compiled
per dtype with ``-DREAL=float|double -DMASK=int32_t|int64_t -DSUFFIX=f32|f64`` and exports
``NAME_SUFFIX``. Builds use ``-march=native``, so a library is cached per source, flags and CPU
(``$XDG_CACHE_HOME/dlf-study``); warnings are on (``-Wall -Wextra``) and the test suite builds
every kernel with ``-Werror``. Where no C compiler is found the user is told once
(:class:`FastPathWarning`) and callers fall back to torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch

from dlf.errors import DlfWarning

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
WARNINGS = ("-Wall", "-Wextra")
LIBS = ("-lmvec", "-lm")  # libmvec: glibc's vectorised exp and log
TYPES = {
    torch.float32: ("float", "int32_t", "f32"),
    torch.float64: ("double", "int64_t", "f64"),
}
PROBLEMS: dict[tuple[str, torch.dtype], str] = {}  # why a kernel is unavailable
#: Inputs up to which the one-hidden-layer kernels (mlp_step, mlp_hvp) are used: each sample
#: updates (inputs + 1) accumulators per block of hidden units, so beyond a few inputs batched
#: matrix products (the fused torch passes) are faster (digits, 64 inputs: 0.8× of the fused pass).
MAX_INPUTS = 8


class Entry(Protocol):
    """A kernel's C entry point as ctypes loads it: callable, its C signature settable."""

    argtypes: list[Any]
    restype: Any

    def __call__(self, *args: Any) -> Any: ...


class FastPathWarning(DlfWarning):
    """Training runs, but slower than it could on this machine (e.g. no C compiler)."""


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/dlf-study`` (``~/.cache/dlf-study``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlf-study"


HEADERS = ("vectors.h",)  # shared by every kernel


def source(name: str) -> str:
    """The C source of kernel ``name`` (or a header's, given with its suffix), from the package."""
    file = name if name.endswith(".h") else f"{name}.c"
    return resources.files(__package__).joinpath(file).read_text()


def command(dtype: torch.dtype, extra: tuple[str, ...] = ()) -> list[str] | None:
    """The compiler command line for ``dtype`` (without source and output), None without a
    compiler ``$CC`` (default ``cc``) on PATH."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    real, mask, suffix = TYPES[dtype]
    defines = (f"-DREAL={real}", f"-DMASK={mask}", f"-DSUFFIX={suffix}")
    return [compiler, *FLAGS, *WARNINGS, *extra, *defines]


def _machine() -> str:
    """The CPU's model and feature flags: a kernel built with -march=native runs only there."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    return "".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def build(name: str, dtype: torch.dtype, output: Path, extra: tuple[str, ...] = ()) -> str:
    """Compile kernel ``name`` for ``dtype`` into ``output``; returns the compiler's warnings.

    Raises ``FileNotFoundError`` without a compiler, ``CalledProcessError`` when the build fails.
    """
    line = command(dtype, extra)
    if line is None:
        raise FileNotFoundError(f"no C compiler {os.environ.get('CC', 'cc')!r} on PATH")
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        code, built = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
        code.write_text(source(name))
        for header in HEADERS:
            (Path(tmp) / header).write_text(source(header))
        done = subprocess.run(
            [*line, str(code), "-o", str(built), *LIBS], check=True, capture_output=True, text=True
        )
        os.replace(built, output)  # atomic: concurrent builders never see half a file
    return done.stderr


@functools.cache
def load(name: str, dtype: torch.dtype, function: str | None = None) -> Entry | None:
    """The entry point ``NAME_SUFFIX`` (or ``FUNCTION_SUFFIX``, another function of the same
    source) of kernel ``name`` for ``dtype``, built on first use; None where it cannot be built
    (no C compiler, no glibc libmvec, a dtype other than f32/f64), with the reason in
    ``PROBLEMS[(name, dtype)]``."""
    if dtype not in TYPES:
        return None
    line = command(dtype)
    if line is None:
        PROBLEMS[name, dtype] = f"no C compiler {os.environ.get('CC', 'cc')!r} on PATH"
        warnings.warn(
            f"{PROBLEMS[name, dtype]}: training uses the slower torch fused pass "
            "(install a C compiler, or set $CC, for the kernel)",
            FastPathWarning,
            stacklevel=2,
        )
        return None
    suffix = TYPES[dtype][2]
    key = hashlib.sha256(
        "\n".join([source(name), *map(source, HEADERS), *line, _machine()]).encode()
    ).hexdigest()
    path = cache_dir() / f"{name}_{suffix}_{key[:16]}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if told := build(name, dtype, path).strip():
                log.warning("compiler warnings for kernel %s (%s):\n%s", name, suffix, told)
        return getattr(ctypes.CDLL(str(path)), f"{function or name}_{suffix}")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = str(getattr(exc, "stderr", "") or exc).strip().splitlines()
        PROBLEMS[name, dtype] = (detail[0] if detail else "the build failed")[:200]
        log.info("C kernel %s not built (%s): torch is used instead", name, detail)
        return None


def entry(name: str, dtype: torch.dtype, ints: int, pointers: int) -> Entry | None:
    """Kernel ``name``'s entry point for ``dtype`` (:func:`load`) with its C signature: ``ints``
    ints (sizes, codes), ``pointers`` tensors' data pointers, then the thread count; returns an
    int status (0: done). None where the kernel cannot be built."""
    function = load(name, dtype)
    if function is not None:
        function.argtypes = [ctypes.c_int] * ints + [ctypes.c_void_p] * pointers + [ctypes.c_int]
        function.restype = ctypes.c_int
    return function
