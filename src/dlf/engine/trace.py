"""Trace files: NetCDF written atomically (temp file, then rename) and read defensively.

A reader never sees half a file, a write that fails leaves the previous file whole, temp files
of writers that died are cleaned up, and a damaged file is one line naming it, even where it
would crash the NetCDF library. :class:`dlf.engine.recorder.Recorder` builds a run's trace;
the schema is documented in ``docs/trace-format.md``.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import xarray as xr

from dlf.engine.former_names import current_names
from dlf.engine.interrupts import interrupts_deferred
from dlf.errors import InputError, OutputError, first_line, is_disk_full

ENGINE = "netcdf4"
TRACE_NAME = "trace.nc"  # a run's trace in its folder: <output.root>/<name>/trace.nc
READ_SECONDS = 60.0  # a file's trial read (open_netcdf) may take this, plus a second per MB


TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: hidden, named by the writer's PID."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove temp files of ``path`` left by writers that died (kill -9, power loss); a live
    writer's temp file (its PID still running) is left alone. Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        match = TEMP_PATTERN.match(tmp.name)
        if match is None or match["name"] != path.name:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` with compression, atomically: readers never see half a file.

    A write that fails (disk full, folder read-only) leaves the previous file untouched and
    raises :class:`dlf.errors.OutputError` with one line saying why.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(path, exc) from None
    tmp = temp_path(path)
    encoding: dict[Hashable, dict[str, Any]] = {
        name: {"zlib": True, "complevel": 4}
        for name, var in ds.variables.items()
        if var.dtype.kind in "fiu" and var.ndim > 0
    }
    try:
        with interrupts_deferred():
            ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
            _fsync(tmp)
            os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # netCDF4: a failed HDF5 write is a RuntimeError
        raise OutputError(path, _write_failure(exc, path.parent)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Push the file to the disk before it replaces the old one: a full disk fails here,
    not after the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failure(exc: BaseException, folder: Path) -> BaseException:
    """Why a write into ``folder`` failed: HDF5 loses the errno of a full disk (a write is
    "HDF error", creating a file "Permission denied"), so a folder left with under 1 MiB free
    (the temp file still in place) is taken to be the cause."""
    if is_disk_full(exc):
        return exc
    try:
        stat = os.statvfs(folder)
    except OSError:
        return exc
    if stat.f_bavail * stat.f_frsize < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return exc


def open_netcdf(path: str | Path) -> xr.Dataset:
    """Open a NetCDF file written by dlf-study (a trace, a study's ``study.nc``), loaded into
    memory (the file is closed again). A file that cannot be read (missing, a folder, not
    NetCDF, truncated or bit-flipped) is an :class:`~dlf.errors.InputError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not a NetCDF file")
    crash = _crash_of_reading(path)
    if crash is not None:
        raise InputError(path, f"damaged: {crash}")
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            return ds.load()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except Exception as exc:  # a damaged file fails anywhere in netCDF4/HDF5/xarray, any type
        reason = first_line(exc, typed=False)
        raise InputError(path, f"not a readable NetCDF file (damaged?): {reason}") from None


def _crash_of_reading(path: Path) -> str | None:
    """Read ``path`` once in a forked child first: a damaged file can crash HDF5 itself (a
    segmentation fault, beyond any exception) or keep it reading for ever, and must not take
    the command down without its one-line error. Returns what went wrong (the signal that
    killed the child, or the time it was given), or None: read, or failed with an ordinary
    error that the real read reports. Without ``fork``, or with other Python threads running
    (one could hold a lock the child would then wait on for ever), None."""
    if not hasattr(os, "fork") or _other_threads() or not path.is_file():
        return None
    limit = READ_SECONDS + path.stat().st_size / 1e6  # a second per MB beyond a generous base
    pid = os.fork()
    if pid == 0:  # the child: read, say nothing, never return into the caller's code
        code = 1
        try:
            faulthandler.disable()  # a crash here is reported by the parent, in one line
            silent = os.open(os.devnull, os.O_WRONLY)
            os.dup2(silent, 1)
            os.dup2(silent, 2)  # HDF5's diagnostics too: the parent's read says what failed
            with xr.open_dataset(path, engine=ENGINE) as ds:
                ds.load()
            code = 0
        finally:
            os._exit(code)
    try:
        status = _wait(pid, limit)
    except BaseException:  # interrupted while waiting: leave no orphan reader
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if status is None:
        return f"reading it did not finish in {limit:.0f} s"
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"reading it crashed the NetCDF library ({name})"
    return None


def _other_threads() -> bool:
    """Whether Python threads besides the main one run (tqdm's monitor, which only sleeps and
    refreshes bars, aside)."""
    main = threading.main_thread()
    return any(t is not main and t.name != "tqdm_monitor" for t in threading.enumerate())


def _wait(pid: int, seconds: float) -> int | None:
    """The exit status of child ``pid``, or None (and the child killed) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def open_trace(path: str | Path) -> xr.Dataset:
    """Open a trace written by dlf-study, loaded into memory (see :func:`open_netcdf`); an
    older version's names are renamed to the current ones (:mod:`dlf.engine.former_names`)."""
    return current_names(open_netcdf(path))
