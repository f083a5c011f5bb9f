"""Deciding a trial before its last step: can it still reach the target, or has it surely?

The ``target`` pruner learns from the study's own full-length trials how much the metric still
moved between an evaluation step and the end of training: the largest gain and the largest
drop seen after step s. A trial whose metric at s plus that largest gain (plus a margin) stays
below the target is hopeless; one whose metric minus the largest drop (and the margin) is still
at the target has reached it. Nothing is decided before ``startup_trials`` full-length trials,
and nothing is called hopeless before one of them reached the target: gains learnt only from
trials that never got there say nothing about how far a good trial climbs.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from dlf.search.config import PrunerConfig

FULL_LENGTH = "full_length"  # user attribute: the trial's run reached its final evaluation


class TargetPruner(BasePruner):
    """Prunes trials that cannot reach ``target``; :meth:`reached` tells those that have."""

    def __init__(self, target: float, startup_trials: int, margin: float) -> None:
        self.target = target
        self.startup_trials = startup_trials
        self.margin = margin
        self._cache: tuple[int, dict[int, tuple[float, float]], bool] = (-1, {}, False)

    def swings(self, study: optuna.Study) -> tuple[dict[int, tuple[float, float]], bool]:
        """Per evaluation step: (largest later gain, largest later drop) over full-length trials
        (empty until there are ``startup_trials`` of them), and whether one reached the target."""
        full = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(FULL_LENGTH) and t.value is not None
        ]
        if len(full) < self.startup_trials:
            return {}, False
        if self._cache[0] != len(full):
            steps = set.intersection(*(set(t.intermediate_values) for t in full))
            swings = {}
            for step in steps:
                moves = [t.value - t.intermediate_values[step] for t in full]  # type: ignore[operator]
                swings[step] = (max(0.0, *moves), max(0.0, *(-m for m in moves)))
            succeeded = any(t.value >= self.target for t in full)  # type: ignore[operator]
            self._cache = (len(full), swings, succeeded)
        return self._cache[1], self._cache[2]

    def hopeless(self, study: optuna.Study, step: int, value: float) -> bool:
        swings, succeeded = self.swings(study)
        swing = swings.get(step)
        return succeeded and swing is not None and value + swing[0] + self.margin < self.target

    def reached(self, study: optuna.Study, step: int, value: float) -> bool:
        swing = self.swings(study)[0].get(step)
        return swing is not None and value - swing[1] - self.margin >= self.target

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        return self.hopeless(study, step, trial.intermediate_values[step])


def make_pruner(config: PrunerConfig, target: float) -> BasePruner:
    if config.name == "target":
        return TargetPruner(target, config.startup_trials, config.margin)
    if config.name == "median":
        return MedianPruner(n_startup_trials=config.startup_trials)
    return NopPruner()
