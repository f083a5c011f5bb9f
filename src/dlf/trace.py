"""Traces: per-member series recorded during a run, written atomically as NetCDF.

The :class:`Recorder` keeps a small preallocated buffer on the run's device so that the step loop
never waits for the host, copies it into host arrays in chunks, and rewrites the NetCDF file
(temp file, then rename) at checkpoints and at the end. A run killed between checkpoints leaves
the last complete trace. The schema is documented in ``docs/trace-format.md``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Hashable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dlf.state import RunContext

ENGINE = "netcdf4"
CHUNK = 512  # records buffered on the device before one copy to the host

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


class Recorder:
    """Collects the core series of one run and writes the run's NetCDF trace."""

    def __init__(self, run: RunContext, path: Path, checkpoint_seconds: float = 60.0) -> None:
        cfg = run.config.train
        self.run = run
        self.path = Path(path)
        self.checkpoint_seconds = checkpoint_seconds
        self._last_write = time.monotonic()
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
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by an earlier run of this trace that was killed

    # --- collecting

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
        for key, values in self.evals.items():
            data_vars[key] = (
                ("member", "eval_step"),
                values[:n_eval].T,
                {"long_name": key.replace("_", " "), "units": "1"},
            )
        data_vars["diverged_step"] = (
            "member",
            self.diverged_step,
            {"long_name": "first step with a non-finite loss (-1: never)", "units": "step"},
        )
        members = run.members
        coords = {
            "member": np.arange(run.n_members),
            "step": ("step", self.steps[:n_rec], {"long_name": "training step", "units": "step"}),
            "eval_step": ("eval_step", self.eval_steps[:n_eval], {"units": "step"}),
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
                raise ValueError(f"trace variable {name!r} contributed twice")
            ds[name] = value
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
            }
        )
        if self.stop_reason is not None:
            ds.attrs["stop_reason"] = self.stop_reason
        return ds

    def write(self, contributions: Mapping[str, Any] | None = None) -> Path:
        """Write the trace atomically (temp file, then rename) and return its path."""
        write_netcdf(self.to_dataset(contributions), self.path)
        self._last_write = time.monotonic()
        return self.path


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` with compression, atomically: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    encoding: dict[Hashable, dict[str, Any]] = {
        name: {"zlib": True, "complevel": 4}
        for name, var in ds.variables.items()
        if var.dtype.kind in "fiu" and var.ndim > 0
    }
    try:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_trace(path: str | Path) -> xr.Dataset:
    """Open a trace written by dlf-study, loaded into memory (the file is closed again)."""
    with xr.open_dataset(path, engine=ENGINE) as ds:
        return ds.load()
