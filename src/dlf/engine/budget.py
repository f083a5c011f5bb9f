"""What a run would cost, estimated from its config before anything is allocated.

A config with width 10⁹, depth 10⁶, 10¹² steps or 10⁷ members is refused here with one line
naming the field that makes it absurd, instead of trying to allocate (and being killed) or
training for years. The estimates are deliberately rough lower bounds: a run they refuse
could never fit; one they accept may still be slow.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlf.config import RunConfig, validate
from dlf.errors import ConfigError
from dlf.hooks.analyzer import Analyzer
from dlf.hooks.registries import Registries

MAX_MEMBERS = 1_000_000
# Floating-point operations a run may need before it is refused: about a month at 10¹¹ flop/s.
MAX_FLOPS = 3e17
BYTES_PER_RECORD = 4 * 8  # loss, static loss, train accuracy, η per recorded step (float64)


def n_members(config: RunConfig) -> int:
    """How many members ``members_of(config)`` would make, without making them; refuses an
    ensemble over :data:`MAX_MEMBERS` naming its largest factor."""
    factors = {
        "train.seeds": len(config.train.seeds),
        "schedule.amplitude": len(config.schedule.amplitude),
        "schedule.period": len(config.schedule.period),
        "train.lr": len(config.train.lr),
    }
    total = math.prod(factors.values())
    if total > MAX_MEMBERS:
        field = max(factors, key=lambda k: factors[k])
        raise ConfigError(
            field,
            f"the ensemble would have {total:,} members (seeds × amplitudes × periods × "
            f"learning rates); at most {MAX_MEMBERS:,} fit in one run",
        )
    return total


@dataclass(frozen=True)
class Estimate:
    """Rough bytes and floating-point operations of a run, and the field driving each."""

    memory: float
    memory_field: str
    flops: float
    flops_field: str


def estimate(
    config: RunConfig,
    members: int,
    *,
    n_features: int = 1,
    n_classes: int = 2,
    n_train: int = 1,
    n_val: int = 0,
    samples_field: str = "data",
    classes_field: str = "data",
) -> Estimate:
    """Memory and work of training ``members`` members of ``config`` on the given data sizes
    (defaults: the smallest any data set has, so the estimate is a lower bound). The fields
    that set the data's samples and classes are named when those drive the estimate."""
    model, train = config.model, config.train
    w, depth = model.width, model.depth
    size = 4 if model.dtype == "float32" else 8
    hidden = (n_features + 1) * w + (depth - 1) * (w + 1) * w
    n_params = hidden + (w + 1) * n_classes
    batch = min(train.batch_size or n_train, n_train)
    width_field = "model.depth" if depth > w else "model.width"
    # the samples as generated (float64) and as tensors; θ, gradient, velocity and the
    # update's temporary per member; every layer's activations kept for the backward pass;
    # the recorded series and Γ per step
    rows = max(batch, n_val)
    terms = {
        samples_field: (n_train + n_val) * (n_features + 1) * (8.0 + size),
        "params": 4.0 * members * n_params * size,
        "activations": 2.0 * members * rows * (w * depth + n_classes) * size,
        "records": train.steps / train.record_every * members * (BYTES_PER_RECORD + 4 * n_classes),
    }
    largest = max(terms, key=lambda k: terms[k])
    memory_field = {
        "params": (
            classes_field if n_classes > max(n_features, w * (depth - 1)) + 1 else width_field
        ),
        "activations": samples_field
        if rows > w * depth + n_classes
        else (classes_field if n_classes > w * depth else width_field),
        "records": classes_field
        if 4 * n_classes > BYTES_PER_RECORD
        else ("train.steps" if train.steps / train.record_every >= members else "members"),
    }.get(largest, largest)
    # forward + backward ≈ 6 flops per parameter per sample per step
    flops = 6.0 * train.steps * members * batch * n_params
    flops_field = "train.steps" if train.steps >= members * n_params / 1e4 else memory_field
    if memory_field == "members" or flops_field == "members":
        lists = {
            "train.seeds": len(train.seeds),
            "schedule.amplitude": len(config.schedule.amplitude),
            "schedule.period": len(config.schedule.period),
            "train.lr": len(train.lr),
        }
        biggest = max(lists, key=lambda k: lists[k])
        memory_field = biggest if memory_field == "members" else memory_field
        flops_field = biggest if flops_field == "members" else flops_field
    return Estimate(sum(terms.values()), memory_field, flops, flops_field)


def planned_data_sizes(config: RunConfig, registries: Registries) -> dict[str, Any]:
    """The data set's sizes known from its options before it is built (for
    :func:`check_budget`), or nothing where its entry cannot say."""
    entry = registries.datasets.get(config.data.name, "data.name")
    if entry.sizes is None:
        return {}
    sizes = entry.sizes(validate(entry.options, config.data.options, prefix="data"))
    return dataclasses.asdict(sizes)


def available_memory(device: str) -> float:
    """Bytes the run may use: free device memory for CUDA, else the machine's available RAM."""
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.split(":", 1)[1]) if ":" in device else None
            free, _ = torch.cuda.mem_get_info(index)
            return float(free)
        except Exception:
            pass
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return math.inf


def _gb(value: float) -> str:
    return f"{value / 1e9:,.3g} GB"


def check_budget(config: RunConfig, members: int, **data_sizes: Any) -> Estimate:
    """Refuse (ConfigError naming the driving field) a run that cannot fit in memory or
    would need more than :data:`MAX_FLOPS`; returns the estimate otherwise."""
    found = estimate(config, members, **data_sizes)
    free = available_memory(config.model.device)
    if found.memory > free:
        raise ConfigError(
            found.memory_field,
            f"this run would need at least {_gb(found.memory)} of memory "
            f"({members:,} members, width {config.model.width}, depth {config.model.depth}, "
            f"{config.train.steps:,} steps), more than the {_gb(free)} available",
        )
    if found.flops > MAX_FLOPS:
        raise ConfigError(
            found.flops_field,
            f"this run would need about {found.flops:.2g} floating-point operations (months "
            f"or more of computing; at most {MAX_FLOPS:.0e} are accepted)",
        )
    return found


def check_analyzers(analyzers: Mapping[str, Analyzer], device: str) -> None:
    """Refuse (ConfigError naming ``analyzers.<name>.<option>``) analyzers whose memory
    (:meth:`Analyzer.memory`) cannot fit, before the run's first step."""
    free = available_memory(device)
    for name, analyzer in analyzers.items():
        for option, needed in analyzer.memory().items():
            if needed > free:
                raise ConfigError(
                    f"analyzers.{name}.{option}",
                    f"would need at least {_gb(needed)} of memory, more than the "
                    f"{_gb(free)} available",
                )
