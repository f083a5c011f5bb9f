"""Deciding a trial before its last step: can it still reach the target, or has it surely?

The ``target`` pruner learns from the study's own full-length trials how far the metric still
moved after an evaluation step s. A trial is *hopeless* at s when its best value so far, plus the
largest gain any reference made from its own best-so-far at s to its final value, plus a margin,
stays below the target. It has *reached* the target when its value at s, minus the largest drop
any reference made from s to its end, minus the margin, is still at the target.

Best-so-far values make the gains robust to the metric's oscillations under a dynamical loss,
and two rules keep the comparison honest. Switching Γ off for the last period makes accuracy
jump, at a step that depends on each trial's period; so a trial is only judged while it still
oscillates, against references whose switch still lies ahead at s. And nothing is called
hopeless until ``startup_trials`` references exist and one of them reached the target: gains
learnt only from trials that never got there say nothing about how far a good trial climbs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from dlf.config import RunConfig
from dlf.search.config import PrunerConfig

FULL_LENGTH = "full_length"  # user attribute: the trial's run reached its final evaluation
HOPELESS, REACHED = "hopeless", "reached"

StaticFrom = Callable[[Mapping[str, Any]], float]  # trial params → first step with Γ ≡ 1


def static_from(run: RunConfig) -> StaticFrom:
    """Where a trial's Γ stops oscillating, as the core schedules it (no period: never)."""
    steps, schedule = run.train.steps, run.schedule

    def first_static_step(params: Mapping[str, Any]) -> float:
        period = params.get("period")
        if period is None:
            return steps
        if schedule.static_from is not None:
            return schedule.static_from
        return max(steps - period, 0) if schedule.static_last_period else steps

    return first_static_step


def best_so_far(curve: Mapping[int, float], step: int) -> float:
    return max(v for s, v in curve.items() if s <= step)


class TargetPruner(BasePruner):
    """Prunes trials that cannot reach ``target``; :meth:`verdict` also tells those that have."""

    def __init__(
        self, target: float, startup_trials: int, margin: float, static_from: StaticFrom
    ) -> None:
        self.target = target
        self.startup_trials = startup_trials
        self.margin = margin
        self.static_from = static_from

    def references(self, study: optuna.Study, step: int) -> list[FrozenTrial]:
        """Full-length trials whose Γ still oscillated at ``step``."""
        return [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(FULL_LENGTH)
            and t.value is not None
            and step in t.intermediate_values
            and self.static_from(t.params) >= step
        ]

    def verdict(
        self, study: optuna.Study, curve: Mapping[int, float], params: Mapping[str, Any]
    ) -> str | None:
        """HOPELESS, REACHED or None for a trial with values ``curve`` (step → value) so far."""
        step = max(curve)
        if step >= self.static_from(params):
            return None
        refs = self.references(study, step)
        if len(refs) < self.startup_trials:
            return None
        finals = [float(t.value) for t in refs]  # type: ignore[arg-type]
        if any(f >= self.target for f in finals):
            gain = max(
                f - best_so_far(t.intermediate_values, step)
                for f, t in zip(finals, refs, strict=True)
            )
            if best_so_far(curve, step) + max(gain, 0.0) + self.margin < self.target:
                return HOPELESS
        drop = max(t.intermediate_values[step] - f for f, t in zip(finals, refs, strict=True))
        if curve[step] - max(drop, 0.0) - self.margin >= self.target:
            return REACHED
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not trial.intermediate_values:
            return False
        return self.verdict(study, trial.intermediate_values, trial.params) == HOPELESS


def make_pruner(config: PrunerConfig, target: float, static_from: StaticFrom) -> BasePruner:
    if config.name == "target":
        return TargetPruner(target, config.startup_trials, config.margin, static_from)
    if config.name == "median":
        return MedianPruner(n_startup_trials=config.startup_trials)
    return NopPruner()
