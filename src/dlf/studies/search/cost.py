"""What a study will cost, said before it starts: the member-steps its bisection needs at the
least and at the most, and the time they take at a rate measured on this machine now."""

from __future__ import annotations

import math

from dlf.engine.probe import step_rate
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
