"""Traces: per-member series recorded during a run, written atomically as NetCDF.

The :class:`Recorder` keeps a small preallocated buffer on the run's device so that the step loop
never waits for the host, copies it into host arrays in chunks, and rewrites the NetCDF file
(temp file, then rename) at checkpoints and at the end. A run killed between checkpoints leaves
the last complete trace. The schema is documented in ``docs/trace-format.md``.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dlf import threads
from dlf.engine.former_names import current_names
from dlf.errors import ConfigError, InputError, OutputError, is_disk_full
from dlf.hooks.state import RunContext

try:
    import fcntl
except ImportError:  # not POSIX: runs aimed at one trace are not guarded
    fcntl = None  # type: ignore[assignment]

ENGINE = "netcdf4"
TRACE_NAME = "trace.nc"  # a run's trace in its folder: <output.root>/<name>/trace.nc
CHUNK = 512  # records buffered on the device before one copy to the host
READ_SECONDS = 60.0  # a file's trial read (open_netcdf) may take this, plus a second per MB

SERIES = {
    "loss": ("dynamical loss F", "1"),
    "static_loss": ("static loss (Γ = 1)", "1"),
    "train_accuracy": ("training accuracy", "1"),
    "lr": ("learning rate η_t", "1"),
}


def package_versions() -> dict[str, str]:
    names = ("dlf-study", "torch", "numpy", "xarray", "netCDF4", "optuna", "pluggy", "pydantic")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class ContributionError(ValueError):
    """A contributed trace variable that cannot join the core ones (name clash, bad shape)."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"trace variable {name!r}: {message}")


#: Attribute values NetCDF stores: text, numbers, and 1-D arrays of one numeric type.
ATTRIBUTE_TYPES = (str, int, float, np.integer, np.floating)


def check_storable(name: str, added: str, var: xr.Variable) -> None:
    """Refuse (:class:`ContributionError` on ``name``) a contributed variable or coordinate
    ``added`` that NetCDF-4 cannot store, so that it never costs the core trace its write:
    float16, complex or object data, a '/' in a name (HDF5's group separator) or a dimension,
    an attribute that is not text, a number or a flat list of numbers."""
    dtype = var.dtype
    if dtype.kind not in "biufUS" or (dtype.kind == "f" and dtype.itemsize < 4):
        raise ContributionError(
            name,
            f"{added!r} has dtype {dtype}, which NetCDF cannot store; "
            "use float32/64, integers, bool or text",
        )
    for label in (added, *map(str, var.dims), *map(str, var.attrs)):
        if "/" in label or not label or label != label.strip():
            raise ContributionError(
                name, f"name {label!r} is not a NetCDF name (no '/', not empty)"
            )
    for key, value in var.attrs.items():
        flat = isinstance(value, ATTRIBUTE_TYPES) and not isinstance(value, bool)
        array = isinstance(value, list | tuple | np.ndarray) and np.asarray(value).ndim == 1
        if array:
            flat = np.asarray(value).dtype.kind in "iuf"
        if not flat:
            raise ContributionError(
                name,
                f"attribute {key!r} of {added!r} is a {type(value).__name__}; NetCDF "
                "stores text, numbers and flat lists of numbers",
            )


STATUSES = {  # the trace's `status` attribute: every value and when it is set
    "running": "a checkpoint of a live run, or of one killed before it could say more",
    "complete": "every step was taken",
    "diverged": "every member diverged, so the run ended early",
    "stopped": "a hook called run.request_stop (the reason is in stop_reason)",
    "failed": "a plugin raised; the trace holds the steps before",
    "interrupted": "Ctrl-C or SIGTERM",
}


class Recorder:
    """Collects the core series of one run and writes the run's NetCDF trace."""

    def __init__(self, run: RunContext, path: Path, checkpoint_seconds: float = 60.0) -> None:
        cfg = run.config.train
        self.run = run
        self.path = Path(path)
        self.checkpoint_seconds = checkpoint_seconds
        self._last_write = time.monotonic()
        self._started = (time.perf_counter(), time.process_time())  # wall and CPU clocks
        m, c = run.n_members, run.objective.n_classes
        self.record_every = cfg.record_every
        self.steps = np.arange(0, run.total_steps, cfg.record_every)
        eval_steps = set(range(0, run.total_steps, cfg.eval_every)) | {run.total_steps}
        self.eval_steps = np.array(sorted(eval_steps))
        n = len(self.steps)
        self.series = {key: np.full((n, m), np.nan) for key in SERIES}
        self.gamma = np.full((n, m, c), np.nan, dtype=np.float32)
        self.evals = {
            key: np.full((len(self.eval_steps), m), np.nan)
            for key in ("val_loss", "val_accuracy", "eval_train_loss", "eval_train_accuracy")
        }
        self.diverged_step = np.full(m, -1, dtype=np.int64)
        self._diverged_at: torch.Tensor | None = None
        self._buffer = torch.full(
            (CHUNK, len(SERIES), m), float("nan"), device=run.device, dtype=run.dtype
        )
        self._gamma_buffer = torch.full(
            (CHUNK, m, c), float("nan"), device=run.device, dtype=torch.float32
        )
        self._buffered_from = 0  # record index of the buffer's first row
        self._n_buffered = 0
        self._n_evals = 0
        self.steps_completed = 0
        self.status = "running"
        self.stop_reason: str | None = None
        self.gradient_path: tuple[str, str] | None = None  # (kernel|fused|autograd, why)
        self.resumed_from = 0  # the step an interrupted run of the same settings continued from
        remove_stale_temp_files(self.path)

    def finish(self, status: str, stop_reason: str | None = None) -> None:
        """Say how the run ended (one of :data:`STATUSES`); the next write records it."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {sorted(STATUSES)}")
        self.status, self.stop_reason = status, stop_reason

    # --- collecting

    def track_divergence(self) -> torch.Tensor:
        """The device tensor ``(member,)`` of divergence steps (-1: never) that the trainer
        fills in place; read at every write, so a trace written at any moment is exact."""
        self._diverged_at = torch.as_tensor(
            self.diverged_step, dtype=torch.long, device=self.run.device
        ).clone()
        return self._diverged_at

    def restore(self, ds: xr.Dataset, step: int) -> bool:
        """Take over the records of the first ``step`` steps from ``ds``, this run's earlier
        trace, to continue after them; False (nothing taken) if ``ds`` holds fewer steps."""
        if int(ds.attrs.get("steps_completed", -1)) < step:
            return False
        n_rec = int(np.searchsorted(self.steps, step))
        n_eval = int(np.searchsorted(self.eval_steps, step))  # the one at `step` comes next
        for key in SERIES:
            self.series[key][:n_rec] = ds[key].values[:, :n_rec].T
        self.gamma[:n_rec] = ds["gamma"].values[:, :n_rec].transpose(1, 0, 2)
        for key, values in self.evals.items():
            values[:n_eval] = ds[key].values[:, :n_eval].T
        diverged = ds["diverged_step"].values
        self.diverged_step = np.where(diverged < step, diverged, -1).astype(np.int64)
        self._buffered_from, self._n_evals, self.steps_completed = n_rec, n_eval, step
        return True

    def wants(self, step: int) -> bool:
        return step % self.record_every == 0

    def record(
        self,
        loss: torch.Tensor,
        static_loss: torch.Tensor,
        train_accuracy: torch.Tensor,
        lr: torch.Tensor,
        gamma: torch.Tensor,
    ) -> None:
        """Store one recorded step (in order); device-side until the chunk is full."""
        row = self._n_buffered
        torch.stack([loss, static_loss, train_accuracy, lr], out=self._buffer[row])
        self._gamma_buffer[row].copy_(gamma)
        self._n_buffered += 1
        if self._n_buffered == CHUNK:
            self._flush()

    def record_eval(self, step: int, values: Mapping[str, torch.Tensor]) -> None:
        i = int(np.searchsorted(self.eval_steps, step))
        for key, value in values.items():
            self.evals[key][i] = value.detach().cpu().numpy()
        self._n_evals = i + 1

    def _flush(self) -> None:
        n, start = self._n_buffered, self._buffered_from
        if n == 0:
            return
        block = self._buffer[:n].cpu().numpy()
        for j, key in enumerate(SERIES):
            self.series[key][start : start + n] = block[:, j]
        self.gamma[start : start + n] = self._gamma_buffer[:n].cpu().numpy()
        self._buffered_from += n
        self._n_buffered = 0

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_write >= self.checkpoint_seconds

    # --- writing

    def to_dataset(self, contributions: Mapping[str, Any] | None = None) -> xr.Dataset:
        """The trace of the steps completed so far as an xarray Dataset."""
        self._flush()
        run = self.run
        n_rec = int(np.searchsorted(self.steps, self.steps_completed))
        n_eval = int(np.searchsorted(self.eval_steps, self.steps_completed, side="right"))
        n_eval = min(n_eval, self._n_evals)
        if self._diverged_at is not None:
            self.diverged_step = self._diverged_at.cpu().numpy().astype(np.int64)
        data_vars: dict[str, Any] = {}
        for key, (long_name, units) in SERIES.items():
            data_vars[key] = (
                ("member", "step"),
                self.series[key][:n_rec].T,
                {"long_name": long_name, "units": units},
            )
        data_vars["gamma"] = (
            ("member", "step", "class_index"),
            self.gamma[:n_rec].transpose(1, 0, 2),
            {"long_name": "class weight Γ_i(t)", "units": "1"},
        )
        # A member's evaluations from its divergence step on are NaN: at that step θ is the
        # point whose loss was non-finite, later it is frozen there.
        eval_steps = self.eval_steps[:n_eval]
        gone = (self.diverged_step[None, :] >= 0) & (eval_steps[:, None] >= self.diverged_step)
        for key, values in self.evals.items():
            data_vars[key] = (
                ("member", "eval_step"),
                np.where(gone, np.nan, values[:n_eval]).T,
                {"long_name": key.replace("_", " "), "units": "1"},
            )
        data_vars["diverged_step"] = (
            "member",
            self.diverged_step,
            {
                "long_name": "first step with a non-finite loss (-1: never); evaluated "
                "metrics are NaN from this step on",
                "units": "step",
            },
        )
        members = run.members
        coords = {
            "member": np.arange(run.n_members),
            "step": ("step", self.steps[:n_rec], {"long_name": "training step", "units": "step"}),
            "eval_step": ("eval_step", eval_steps, {"units": "step"}),
            "class_index": np.arange(run.objective.n_classes),
            "seed": ("member", np.array([m.seed for m in members]), {"long_name": "seed"}),
            "amplitude": ("member", np.array([m.amplitude for m in members]), {"long_name": "A"}),
            "period": ("member", np.array([m.period for m in members]), {"units": "step"}),
            "eta": (
                "member",
                np.array([m.lr for m in members]),
                {"long_name": "base learning rate"},
            ),
            "width": ((), run.model.width, {"long_name": "hidden width"}),
        }
        ds = xr.Dataset(data_vars, coords=coords)
        for name, value in (contributions or {}).items():
            if name in ds.variables:
                raise ContributionError(name, "collides with a core variable of the trace")
            core = set(ds.variables)
            try:
                ds[name] = value
            except Exception as exc:  # xarray refuses it in many ways; any is the plugin's
                raise ContributionError(name, str(exc).splitlines()[0]) from None
            for added in set(ds.variables) - core:  # the variable and any coordinate with it
                check_storable(str(name), str(added), ds.variables[added])
        ds.attrs.update(
            {
                "title": f"dlf-study trace of run {run.config.name!r}",
                "Conventions": "CF-1.8",
                "status": self.status,
                "steps_completed": self.steps_completed,
                "total_steps": run.total_steps,
                "loss_name": run.config.loss.name,
                "schedule_name": run.config.schedule.name,
                "dataset": run.data.name,
                "config": run.config.model_dump_json(),
                "versions": json.dumps(package_versions()),
                "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **self.cost(),
            }
        )
        if self.stop_reason is not None:
            ds.attrs["stop_reason"] = self.stop_reason
        if self.resumed_from:
            ds.attrs["resumed_from_step"] = self.resumed_from
        if self.gradient_path is not None:
            ds.attrs["gradient_path"], ds.attrs["gradient_path_reason"] = self.gradient_path
        return ds

    def cost(self) -> dict[str, Any]:
        """Wall and CPU seconds since the recorder was made, and the threads they ran on
        (``cpu_seconds`` counts every thread of the process, so it can exceed the wall)."""
        wall, cpu = self._started
        choice = threads.current()
        return {
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "threads": choice.threads,
            "threads_reason": choice.reason,
            "omp_wait_policy": threads.wait_policy(),
        }

    def write(self, contributions: Mapping[str, Any] | None = None) -> Path:
        """Write the trace atomically (temp file, then rename) and return its path."""
        write_netcdf(self.to_dataset(contributions), self.path)
        self._last_write = time.monotonic()
        return self.path


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


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a file write takes effect once the write is done: HDF5 is not
    safe to interrupt (a write cut short could hang the next one). The signal is then raised
    again for its own handler. Only the main thread receives signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in signals
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if received:
        signal.raise_signal(received[0])


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


class TraceLock:
    """An exclusive lock on one trace path for the duration of a run (``flock`` on a hidden
    ``.<name>.lock`` beside it). The kernel drops it when the process dies, so a killed run
    never leaves a stale lock; a second run aimed at the same trace gets a one-line error.
    A run that ends removes the file (while still holding it), and a locker that finds its
    file unlinked under it tries again, so no two runs ever hold the same path."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = self.path.with_name(f".{self.path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> TraceLock:
        while not self._try_acquire():  # the file was removed by the holder that just ended
            pass
        return self

    def _try_acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise OutputError(self.file, exc) from None
            raise ConfigError(
                "output.root", f"cannot write in {self.path.parent}: {exc.strerror or exc}"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(
                    "name",
                    f"another run (pid {holder}) is writing {self.path}; wait for it to end, "
                    "or give this run another name or --out",
                ) from None
        if not _same_file(fd, self.file):
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock is held, only its holder's PID is lost
            os.close(fd)
            raise OutputError(self.file, exc) from None
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            self.file.unlink(missing_ok=True)  # still held: no one can be between open and lock
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> TraceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        held, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


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
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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
