"""The recorder: a run's core series collected during training and written as its trace.

The :class:`Recorder` keeps a small preallocated buffer on the run's device so that the step loop
never waits for the host, copies it into host arrays in chunks, and rewrites the NetCDF file
(:func:`dlf.engine.trace.write_netcdf`: temp file, then rename) at checkpoints and at the end.
A run killed between checkpoints leaves the last complete trace. The schema is documented in
``docs/trace-format.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dlf import threads
from dlf.engine.trace import remove_stale_temp_files, write_netcdf
from dlf.errors import first_line
from dlf.hooks.state import RunContext

CHUNK = 512  # records buffered on the device before one copy to the host

SERIES = {
    "loss": ("dynamical loss F", "1"),
    "static_loss": ("static loss (Γ = 1)", "1"),
    "train_accuracy": ("training accuracy", "1"),
    "lr": ("learning rate η_t", "1"),
}


def package_versions() -> dict[str, str]:
    """The versions of dlf-study and the libraries a trace's numbers depend on."""
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


def add_contribution(ds: xr.Dataset, name: str, value: Any) -> None:
    """Add a plugin's trace variable ``name`` to ``ds`` in place, with any coordinate it brings;
    :class:`ContributionError` if it clashes with a core variable, xarray refuses it or NetCDF
    could not store it."""
    if name in ds.variables:
        raise ContributionError(name, "collides with a core variable of the trace")
    core = set(ds.variables)
    try:
        ds[name] = value
    except Exception as exc:  # xarray refuses it in many ways; any is the plugin's
        raise ContributionError(name, first_line(exc, typed=False)) from None
    for added in set(ds.variables) - core:  # the variable and any coordinate with it
        check_storable(name, str(added), ds.variables[added])


def attributes(long_name: str, units: str) -> dict[str, str]:
    """A trace variable's CF attributes."""
    return {"long_name": long_name, "units": units}


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
        n_rec = int(np.searchsorted(self.steps, self.steps_completed))
        n_eval = int(np.searchsorted(self.eval_steps, self.steps_completed, side="right"))
        n_eval = min(n_eval, self._n_evals)
        if self._diverged_at is not None:
            self.diverged_step = self._diverged_at.cpu().numpy().astype(np.int64)
        ds = xr.Dataset(self._variables(n_rec, n_eval), coords=self._coordinates(n_rec, n_eval))
        for name, value in (contributions or {}).items():
            add_contribution(ds, str(name), value)
        ds.attrs.update(self._attributes())
        return ds

    def _variables(self, n_rec: int, n_eval: int) -> dict[str, Any]:
        """The core series of the first ``n_rec`` records and ``n_eval`` evaluations."""
        data_vars: dict[str, Any] = {
            key: (("member", "step"), self.series[key][:n_rec].T, attributes(*described))
            for key, described in SERIES.items()
        }
        data_vars["gamma"] = (
            ("member", "step", "class_index"),
            self.gamma[:n_rec].transpose(1, 0, 2),
            attributes("class weight Γ_i(t)", "1"),
        )
        # A member's evaluations from its divergence step on are NaN: at that step θ is the
        # point whose loss was non-finite, later it is frozen there.
        eval_steps = self.eval_steps[:n_eval]
        gone = (self.diverged_step[None, :] >= 0) & (eval_steps[:, None] >= self.diverged_step)
        for key, values in self.evals.items():
            data_vars[key] = (
                ("member", "eval_step"),
                np.where(gone, np.nan, values[:n_eval]).T,
                attributes(key.replace("_", " "), "1"),
            )
        data_vars["diverged_step"] = (
            "member",
            self.diverged_step,
            attributes(
                "first step with a non-finite loss (-1: never); evaluated metrics are NaN from "
                "this step on",
                "step",
            ),
        )
        return data_vars

    def _coordinates(self, n_rec: int, n_eval: int) -> dict[str, Any]:
        """Steps, evaluation steps, classes, and each member's seed, A, T and η."""
        run, members = self.run, self.run.members

        def per_member(attribute: str) -> np.ndarray:
            return np.array([getattr(m, attribute) for m in members])

        return {
            "member": np.arange(run.n_members),
            "step": ("step", self.steps[:n_rec], attributes("training step", "step")),
            "eval_step": ("eval_step", self.eval_steps[:n_eval], {"units": "step"}),
            "class_index": np.arange(run.objective.n_classes),
            "seed": ("member", per_member("seed"), {"long_name": "seed"}),
            "amplitude": ("member", per_member("amplitude"), {"long_name": "A"}),
            "period": ("member", per_member("period"), {"units": "step"}),
            "eta": ("member", per_member("lr"), {"long_name": "base learning rate"}),
            "width": ((), run.model.width, {"long_name": _width_label(run.model)}),
        }

    def _attributes(self) -> dict[str, Any]:
        """The trace's global attributes: what ran, how it ended, what it cost."""
        run = self.run
        attrs = {
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
        if self.stop_reason is not None:
            attrs["stop_reason"] = self.stop_reason
        if self.resumed_from:
            attrs["resumed_from_step"] = self.resumed_from
        if self.gradient_path is not None:
            attrs["gradient_path"], attrs["gradient_path_reason"] = self.gradient_path
        return attrs

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


def _width_label(model: object) -> str:
    """What the trace's ``width`` counts: the MLP's hidden units, or a module model's declared
    size option (0 where the model declares none)."""
    return str(getattr(model, "width_label", "hidden width"))
