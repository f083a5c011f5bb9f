"""What a study found, per track: the answer w* with its bracket, every rung tried with its
search pick and confirmation on fresh seeds, and the answer in words (never a bare number)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import (
    NOT_REACHED,
    REACHES,
    WITHIN_NOISE,
    Estimate,
    SequentialRule,
    is_confirmation,
)
from dlf.studies.search.ladder import FINISHED, Bracket, bracket, rungs, trial_width
from dlf.studies.search.tracks import track_losses


@dataclass(frozen=True)
class Best:
    """The best trial at a width: its schedule, seed-mean metric with its standard error, and
    how many trials that width had (the best of many is an optimistic pick)."""

    width: int
    number: int
    amplitude: float
    period: float
    value: float
    sem: float
    trials: int

    def describe(self, dynamical: bool) -> str:
        text = f"{self.value:.3f} ± {self.sem:.3f}"
        if dynamical:
            text += f" at A = {self.amplitude:.3g}, T = {self.period:.3g}"
        trials = "1 trial" if self.trials == 1 else f"best of {self.trials} trials"
        return f"{text}, {trials}"


@dataclass(frozen=True)
class RungResult:
    """One rung tried: the (A, T) the search selected there, its confirmation on fresh seeds
    and the verdict (None: still searching or confirming)."""

    width: int
    search: Best | None
    confirmed: Estimate | None
    verdict: str | None
    by_search: bool  # decided on the search seeds alone (clearly below the target there)
    member_steps: int  # of its confirmation rounds
    confirm_seeds: tuple[int, ...] = ()
    confirm_values: tuple[float, ...] = ()

    def describe(self, dynamical: bool) -> str:
        """E.g. ``0.910 ± 0.010, 40 fresh seeds, 39/40 seeds reach, P(reach) 0.99``."""
        c = self.confirmed
        if c is None or c.n == 0:
            found = "" if self.search is None else self.search.describe(dynamical)
            return f"search {found}; not confirmed" if found else "nothing completed"
        at = ""
        if dynamical and self.search is not None:
            at = f" at A = {self.search.amplitude:.3g}, T = {self.search.period:.3g}"
        return (
            f"{c.mean:.3f} ± {c.sem:.3f}, {c.n} fresh seeds{at}, "
            f"{c.reached}/{c.n} seeds reach, P(reach) {c.p_reach:.2f}"
        )


@dataclass(frozen=True)
class Finding:
    """One track's answer: the bracket on w*, every rung tried, the best trial at w* and at
    the rung below it (on the search seeds)."""

    kind: str
    loss: str
    bracket: Bracket
    best: Best | None  # at w*
    below: Best | None  # at the rung just below w* (or the widest rung, if none reaches)
    trials: int
    member_steps: int
    rungs: dict[int, RungResult] = field(default_factory=dict)
    knob: str = "width"  # what the ladder sets, in words (``myrtle5 channels``)

    @property
    def w_star(self) -> int | None:
        return self.bracket.w_star

    def sentence(self, target: float, metric: str) -> str:
        """The answer with its evidence, e.g. ``w* = 64 confirmed (…); within noise: 45 (…)``;
        never a bare number."""
        dynamical = self.kind == "dynamical"
        if not self.bracket.converged:
            return f"{self.loss}: not converged yet, {self.bracket.describe()}{self._tried()}"
        if self.w_star is None:
            widest = self.bracket.ladder[-1]
            return (
                f"{self.loss} is not confirmed to reach {metric} ≥ {target:g} up to "
                f"{self.knob} {widest}{self._tried()}"
            )
        text = (
            f"{self.loss}: w* = {self.w_star}{self._unit()} confirmed to reach {metric} ≥ "
            f"{target:g} "
            f"({self.rungs[self.w_star].describe(dynamical)})"
        )
        return text + self._tried(below=self.w_star)

    def _unit(self) -> str:
        """`` (myrtle5 channels)`` after w* where the ladder sets another option than width."""
        return "" if self.knob == "width" else f" ({self.knob})"

    def _tried(self, below: int | None = None) -> str:
        """The decided rungs (below ``below``), grouped by verdict, widest first."""
        dynamical = self.kind == "dynamical"
        parts = []
        for verdict in (WITHIN_NOISE, NOT_REACHED, REACHES):
            widths = [
                w
                for w in sorted(self.rungs, reverse=True)
                if self.rungs[w].verdict == verdict and (below is None or w < below)
            ]
            if widths:
                listed = ", ".join(f"{w} ({self.rungs[w].describe(dynamical)})" for w in widths)
                parts.append(f"{verdict}: {listed}")
        return "; " + "; ".join(parts) if parts else ""


def sem(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def best_at(trials: list[FrozenTrial], width: int) -> Best | None:
    """The completed trial with the highest value at ``width`` (None: none completed there)."""
    at = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and trial_width(t) == width and t.value is not None
    ]
    if not at:
        return None
    top = max(at, key=lambda t: float(t.value))  # type: ignore[arg-type]
    finished = sum(t.state in FINISHED and trial_width(t) == width for t in trials)
    return Best(
        width,
        top.number,
        float(top.params.get("amplitude", 1.0)),
        float(top.params.get("period", np.nan)),
        float(top.value),  # type: ignore[arg-type]
        sem(top.user_attrs.get("seed_values", [])),
        finished,
    )


def find(config: StudyConfig, kind: str, loss: str, trials: list[FrozenTrial]) -> Finding:
    search = config.search
    per_width = search.trials_at_width(kind)
    ladder = search.width.ladder()
    rule = SequentialRule.of(search)
    table = rungs(trials)
    b = bracket(ladder, table, rule, per_width)
    searched = [t for t in trials if not is_confirmation(t)]
    best = None if b.w_star is None else best_at(searched, b.w_star)
    below_index = b.hi - 1 if b.converged else b.lo
    below = best_at(searched, ladder[below_index]) if below_index >= 0 else None
    steps = sum(int(t.user_attrs.get("member_steps", 0)) for t in trials)
    results = {}
    for width, rung in sorted(table.items()):
        verdict = rung.verdict(rule, per_width)
        results[width] = RungResult(
            width,
            best_at(searched, width),
            rule.confirmed(rung.confirm_values) if rung.confirm_values else None,
            verdict,
            verdict is not None and rung.rejected_by_search(rule),
            rung.confirm_member_steps,
            rung.confirm_seeds,
            rung.confirm_values,
        )
    return Finding(kind, loss, b, best, below, len(searched), steps, results, config.knob.label)


def findings(config: StudyConfig, studies: dict[str, optuna.Study]) -> dict[str, Finding]:
    names = track_losses(config)
    return {
        kind: find(config, kind, names[kind], study.get_trials(deepcopy=False))
        for kind, study in studies.items()
    }
