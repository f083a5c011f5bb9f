"""Deciding a trial before its last step, only from evidence that predicts its final value.

Under a dynamical loss the metric while Γ oscillates says little about the metric once Γ is
static: DCE runs sit far below the target mid-run and jump in the static last period. So the
``target`` pruner judges a trial only from evaluations made after its Γ became static
(``static_from``: the last period by default; step 0 for the static loss) and only once Γ has
been static for ``settle_steps`` (at the switch itself the value is still the oscillating one),
and compares it with
the study's full-length trials aligned the same way, by the steps elapsed since *their* Γ
became static. A trial d steps into its static phase is

- *hopeless* when its best value so far in that phase, plus the largest gain any reference made
  from its best-so-far d steps into its own static phase to its final value, plus a margin,
  stays below the target;
- *reached* when its value, minus the largest drop any reference made from d steps into its
  static phase to its end, minus the margin, is still at the target.

References must have had at least as long a static phase as the trial has left, and nothing is
called hopeless until ``startup_trials`` references exist and one of them reached the target
(gains learnt only from trials that never got there say nothing about how far a good trial
climbs). With the papers' short last periods (T ≪ steps) this rarely decides a dynamical trial
early, by design; it saves work on the static baseline and on schedules with an early
``schedule.static_from``. The references are read from the storage once per evaluation round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from dlf.config import RunConfig
from dlf.studies.search.config import PrunerConfig

FULL_LENGTH = "full_length"  # user attribute: the trial's run reached its final evaluation
HOPELESS, REACHED = "hopeless", "reached"

StaticFrom = Callable[[Mapping[str, Any]], float]  # trial params → first step with Γ ≡ 1


def static_from(run: RunConfig) -> StaticFrom:
    """Where a trial's Γ stops oscillating, as the core schedules it (no period: step 0)."""

    def first_static_step(params: Mapping[str, Any]) -> float:
        period = params.get("period")
        if period is None:
            return 0.0
        return run.schedule.first_static_step(float(period), run.train.steps)

    return first_static_step


@dataclass(frozen=True)
class Reference:
    """A finished full-length trial: its curve, final value and where its Γ became static."""

    curve: Mapping[int, float]
    final: float
    static_from: float

    def best_since_static(self, offset: float) -> float | None:
        """Best value within ``offset`` steps of its Γ becoming static (None: no evaluation)."""
        end = self.static_from + offset
        return max((v for s, v in self.curve.items() if self.static_from <= s <= end), default=None)

    def value_at(self, offset: float) -> float | None:
        """The last value at most ``offset`` steps into its static phase."""
        steps = [s for s in self.curve if self.static_from <= s <= self.static_from + offset]
        return self.curve[max(steps)] if steps else None


class TargetPruner(BasePruner):
    """Prunes trials that cannot reach ``target``; :meth:`verdict` also tells those that have."""

    def __init__(
        self,
        target: float,
        startup_trials: int,
        margin: float,
        settle_steps: int,
        static_from: StaticFrom,
    ) -> None:
        self.target = target
        self.startup_trials = startup_trials
        self.margin = margin
        self.settle_steps = settle_steps
        self.static_from = static_from

    def judged_from(self, params: Mapping[str, Any]) -> float:
        """The first step whose evaluation is evidence: ``settle_steps`` into the static phase
        (the static loss: from step 0)."""
        start = self.static_from(params)
        return start + self.settle_steps if start > 0 else 0.0

    def references(self, study: optuna.Study) -> list[Reference]:
        """The study's finished full-length trials (one storage read)."""
        return [
            Reference(
                dict(t.intermediate_values),
                float(t.value),
                self.static_from(t.params),
            )
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(FULL_LENGTH) and t.value is not None and t.intermediate_values
        ]

    def verdict(
        self,
        references: Sequence[Reference],
        curve: Mapping[int, float],
        params: Mapping[str, Any],
    ) -> str | None:
        """HOPELESS, REACHED or None for a trial with values ``curve`` (step → value) so far."""
        step = max(curve)
        start = self.static_from(params)
        if step < self.judged_from(params):
            return None  # Γ oscillates (or just stopped): nothing here predicts the final value
        offset = step - start
        gains, drops, finals = [], [], []
        for ref in references:
            best, value = ref.best_since_static(offset), ref.value_at(offset)
            if best is None or value is None or ref.static_from > start:
                continue  # no evaluation there, or a shorter static phase than the trial's
            gains.append(ref.final - best)
            drops.append(value - ref.final)
            finals.append(ref.final)
        if len(finals) < self.startup_trials:
            return None
        since = [v for s, v in curve.items() if s >= start]
        someone_reached = any(f >= self.target for f in finals)
        if someone_reached and max(since) + max(max(gains), 0.0) + self.margin < self.target:
            return HOPELESS
        if curve[step] - max(max(drops), 0.0) - self.margin >= self.target:
            return REACHED
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's interface (one trial, its own storage read); the search itself calls
        :meth:`verdict` with references read once per round."""
        if not trial.intermediate_values:
            return False
        refs = self.references(study)
        return self.verdict(refs, trial.intermediate_values, trial.params) == HOPELESS


def make_pruner(config: PrunerConfig, target: float, run: RunConfig) -> BasePruner:
    if config.name == "target":
        return TargetPruner(
            target,
            config.startup_trials,
            config.margin,
            config.settle_steps,
            static_from(run),
        )
    if config.name == "median":
        return MedianPruner(n_startup_trials=config.startup_trials)
    return NopPruner()
