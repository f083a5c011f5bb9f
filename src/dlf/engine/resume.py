"""An earlier run at the same trace path: whether it finished (skip it), holds other settings
(refuse to overwrite it), or can be continued from its checkpoint.

A checkpoint holds what a run needs to continue where it stopped: its parameters and optimiser
state, saved beside the trace at every checkpoint (``.trace.nc.resume.pt``) and removed once it
finishes. The trace holds the records of the finished steps but not θ, so without this an
interrupted run (Ctrl-C, SIGTERM, kill -9, a study's released trial) would start again from
step 0. Only runs without analyzers are resumable: an analyzer's own state (warm starts,
detectors, slices) is not saved, and a half-replayed analyzer would record a trace that no single
run produced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from dlf.config import Member, RunConfig
from dlf.engine.interrupts import interrupts_deferred
from dlf.engine.recorder import Recorder
from dlf.engine.trace import open_trace, remove_stale_temp_files, temp_path
from dlf.errors import InputError


@dataclass
class Checkpoint:
    """The training state after ``step`` steps, everything the step loop carries forward."""

    step: int
    theta: torch.Tensor
    active: torch.Tensor
    velocity: torch.Tensor | None = None  # heavy ball's, where momentum > 0
    batches: dict[str, Any] | None = None  # minibatch generators' states and the epoch order


def checkpoint_path(trace: Path) -> Path:
    """The hidden file beside ``trace`` that its run's checkpoint goes to."""
    return trace.with_name(f".{trace.name}.resume.pt")


def save(trace: Path, checkpoint: Checkpoint, fingerprint: str) -> None:
    """Write ``checkpoint`` atomically (temp file, then rename), tagged with the run's
    ``fingerprint`` (its settings and members) so that no other run continues from it."""
    path = checkpoint_path(trace)
    tmp = temp_path(path)
    state = {
        "fingerprint": fingerprint,
        "step": checkpoint.step,
        "theta": checkpoint.theta.detach().cpu(),
        "active": checkpoint.active.cpu(),
        "velocity": None if checkpoint.velocity is None else checkpoint.velocity.cpu(),
        "batches": checkpoint.batches,
    }
    try:
        with interrupts_deferred():
            torch.save(state, tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(trace: Path, fingerprint: str, device: torch.device) -> Checkpoint | None:
    """The checkpoint of the run ``fingerprint`` names, on ``device``; None where there is
    none, it belongs to other settings, or it cannot be read (then the run starts afresh)."""
    path = checkpoint_path(trace)
    remove_stale_temp_files(path)  # a run killed while saving leaves its temp file
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # a torn or foreign file: nothing to continue from
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    return Checkpoint(
        step=int(state["step"]),
        theta=state["theta"],
        active=state["active"],
        velocity=state["velocity"],
        batches=state["batches"],
    )


def discard(trace: Path) -> None:
    """Remove the checkpoint of a run that finished (or whose trace was replaced), and the
    temp files of writers killed while saving one."""
    checkpoint_path(trace).unlink(missing_ok=True)
    remove_stale_temp_files(checkpoint_path(trace))


FINISHED = ("complete", "diverged", "stopped")  # statuses of a run that need not run again


def earlier_status(path: Path, config: RunConfig) -> str | None:
    """The status of an earlier run of ``config``'s settings whose trace is at ``path``; None
    where there is none (or only a damaged file). A trace of other settings is an InputError
    naming the first that differs: runs never overwrite each other silently (``--fresh`` does,
    on purpose). ``output`` (where and how often to write) is not a setting of the run."""
    if not path.exists():
        return None
    try:
        attrs = open_trace(path).attrs
    except InputError:  # damaged (killed mid-write by an older version): run it again
        return None
    try:
        earlier = json.loads(attrs["config"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "is not a dlf-study trace; pass --fresh to replace it") from None
    differs = first_difference(earlier, config.model_dump(mode="json"), skip={"output"})
    if differs is not None:
        raise InputError(
            path,
            f"holds a run with other settings ({differs}); pass --fresh to replace it, "
            "or give this run another name or --out",
        )
    return str(attrs.get("status"))


def first_difference(old: Any, new: Any, skip: set[str], prefix: str = "") -> str | None:
    """The first dotted key where two config trees differ, as ``key: old → new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted((set(old) | set(new)) - skip):
            found = first_difference(old.get(key), new.get(key), set(), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"


def fingerprint(config: RunConfig, members: Sequence[Member]) -> str:
    """What a checkpoint must match to be continued: the settings (not ``output``) and the
    members, in order."""
    return json.dumps(
        {
            "config": config.model_dump(mode="json", exclude={"output"}),
            "members": [m.model_dump() for m in members],
        },
        sort_keys=True,
    )


def continued(recorder: Recorder, fingerprint: str, fresh: bool) -> Checkpoint | None:
    """The checkpoint this run continues from, its records taken over from the earlier trace;
    None for a run that starts at step 0 (``fresh``, with analyzers, or nothing to continue
    from), and then any checkpoint left is removed."""
    path, run = recorder.path, recorder.run
    found = None if fresh or run.analyzers else continuable(path, fingerprint, run.device)
    if found is not None:
        checkpoint, earlier = found
        try:
            if recorder.restore(earlier, checkpoint.step):
                recorder.resumed_from = checkpoint.step
                return checkpoint
        except (KeyError, ValueError):  # the trace is not of this run after all
            pass
    discard(path)
    return None


def continuable(
    trace: Path, fingerprint: str, device: torch.device
) -> tuple[Checkpoint, xr.Dataset] | None:
    """The run's checkpoint and the trace holding its records, where both are there and the
    trace reaches the checkpoint's step; None otherwise."""
    checkpoint = load(trace, fingerprint, device)
    if checkpoint is None:
        return None
    try:
        earlier = open_trace(trace)
    except InputError:  # damaged: nothing to take the records from
        return None
    if int(earlier.attrs.get("steps_completed", -1)) < checkpoint.step:
        return None
    return checkpoint, earlier
