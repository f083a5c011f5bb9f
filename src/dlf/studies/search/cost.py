"""What a study will cost, said before it starts: the member-steps its bisection needs at the
least and at the most, the time they take at a rate measured on this machine now, and (for a
module model, whose size the engine's MLP estimate does not know) whether its widest rung fits
in memory."""

from __future__ import annotations

import math

import torch

from dlf.engine.budget import available_memory
from dlf.engine.probe import step_rate
from dlf.engine.run import build_model
from dlf.errors import ConfigError
from dlf.hooks.manager import Plugins
from dlf.numerics.data import Dataset
from dlf.numerics.models import ModuleModel
from dlf.studies.search.config import StudyConfig
from dlf.threads import current


def rungs_per_track(n_widths: int) -> int:
    """Widths a bisection over ``n_widths`` ladder widths evaluates (the brackets' ends
    included)."""
    return math.ceil(math.log2(n_widths)) + 1 if n_widths > 1 else 1


def member_steps(config: StudyConfig) -> tuple[int, int]:
    """(least, most) member-steps: every rung decided by its first batch and first
    confirmation round, or by all its trials and the most fresh seeds."""
    search, steps = config.search, config.run.train.steps
    rungs, seeds = rungs_per_track(len(search.width.ladder())), len(search.trial_seeds())
    kinds = ["dynamical", *(["static"] if search.static_baseline else [])]
    least = most = 0
    for kind in kinds:
        per_width = search.trials_at_width(kind)
        least += rungs * (min(search.batch, per_width) * seeds + search.confirm_seeds) * steps
        most += rungs * (per_width * seeds + search.confirm_max) * steps
    return least, most


def plan(config: StudyConfig, workers: int = 1) -> str:
    """The cost estimate printed before a study starts, with the probe it rests on."""
    search = config.search
    ladder = search.width.ladder()
    middle = ladder[len(ladder) // 2]
    members = search.batch * len(search.trial_seeds())
    rate = step_rate(config.at_width(config.run, middle), members)
    knob = config.knob
    rungs = "widths" if knob.is_mlp_width else f"{knob.label} rungs"
    least, most = member_steps(config)
    threads = current().threads
    return (
        f"plan: about {rungs_per_track(len(ladder))} {rungs} per track (bisection over "
        f"{len(ladder)}), {_count(least, most)} member-steps; at "
        f"{rate:,.0f} member-steps/s (measured now at {knob.label} {middle}, {members} members, "
        f"{threads} thread{'s' if threads > 1 else ''}) that is "
        f"{_duration(least / rate / workers)}–{_duration(most / rate / workers)}"
        + (f" over {workers} workers" if workers > 1 else "")
        + " (early stopping shortens it; a busier machine lengthens it)"
    )


def module_memory(model: ModuleModel, members: int, batch: int, n_val: int, size: int) -> float:
    """Rough bytes of training ``members`` members of ``model``: θ, gradient, velocity and the
    update's temporary per member, and the larger of a training step's activations and their
    gradients (``batch`` samples; every member's at once under vmap, one at a time in a loop)
    and an evaluation's two largest layers over the ``n_val`` validation samples."""
    hidden = model.hidden or (0,)
    at_once = members if model.ensemble == "vmap" else 1
    train = 2.0 * batch * sum(hidden)
    evaluate = 2.0 * n_val * max(hidden)
    return size * (4.0 * members * model.n_params + at_once * max(train, evaluate))


def check_memory(config: StudyConfig, plugins: Plugins, data: Dataset, members: int) -> None:
    """Refuse, naming ``search.width.high`` and the width option, a module model whose widest
    rung cannot fit in memory; sized on the meta device, so nothing is allocated. The MLP is
    left to the engine's own estimate (:func:`dlf.engine.budget.check_budget`)."""
    knob, ladder = config.knob, config.search.width.ladder()
    if knob.is_mlp_width:
        return
    run = config.at_width(config.run, ladder[-1])
    with torch.device("meta"):
        model = build_model(run.model, plugins.registries.models, data)
    if not isinstance(model, ModuleModel):  # a plugin's own ensemble model: its own estimate
        return
    batch = min(run.train.batch_size or len(data.y_train), len(data.y_train))
    size = 4 if run.model.dtype == "float32" else 8
    need = module_memory(model, members, batch, len(data.y_val), size)
    free = available_memory(run.model.device)
    if need > free:
        raise ConfigError(
            "search.width.high",
            f"{knob.label} {ladder[-1]} would need at least {need / 1e9:,.1f} GB of memory "
            f"({members} members of {model.n_params:,} parameters), more than the "
            f"{free / 1e9:,.1f} GB available",
        )


def _count(least: int, most: int) -> str:
    """``5.4–15.0 M``, or below a million the exact counts (``4,800–9,600``)."""
    if most < 1e6:
        return f"{least:,}–{most:,}"
    return f"{least / 1e6:,.1f}–{most / 1e6:,.1f} M"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
