"""What a run needs to continue where it stopped: its parameters and optimiser state, saved
beside the trace at every checkpoint (``.trace.nc.resume.pt``) and removed once it finishes.

The trace holds the records of the finished steps but not θ, so without this an interrupted
run (Ctrl-C, SIGTERM, kill -9, a study's released trial) would start again from step 0. Only
runs without analyzers are resumable: an analyzer's own state (warm starts, detectors, slices)
is not saved, and a half-replayed analyzer would record a trace that no single run produced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlf.engine.interrupts import interrupts_deferred
from dlf.engine.trace import remove_stale_temp_files, temp_path


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
