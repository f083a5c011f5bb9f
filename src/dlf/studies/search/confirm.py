"""Deciding whether a rung reaches the target, on fresh seeds, with a stated confidence.

The (A, T) of a width is *selected* on the search seeds (the best of its trials), so its search
mean is biased upwards. Whether the width reaches the target is decided on fresh seeds, disjoint
from the search seeds, by a sequential rule:

- after each round of confirmation seeds (``confirm_seeds`` first, then ``confirm_step`` more,
  at most ``confirm_max``), a one-sided t interval on the confirmed seed-mean at level
  ``1 − α/K`` is computed, α = 1 − ``confirm_level`` and K the number of rounds the cap allows
  (Bonferroni over the looks, so that the whole sequence errs with probability at most α);
- the rung *reaches* when the lower bound is at the target, *does not reach* when the upper
  bound is below it, and is *within noise* when the cap is used up with the target inside;
  otherwise another round is trained.

A rung whose search estimate already lies clearly below the target (its upper bound, same
level, from at least 5 search seeds) is decided *does not reach* without confirmation:
selection only biases upwards, so the search data cannot make a failing rung look worse than
it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial
from scipy import stats

from dlf.studies.search.config import SearchConfig
from dlf.studies.search.liveness import ROLE

CONFIRM = "confirm"
CONFIRMS = "confirms"  # user attribute: the number of the search trial a confirmation repeats
SEEDS = "seeds"  # user attribute: the seeds a confirmation trial trained

REACHES, NOT_REACHED, WITHIN_NOISE = "reaches", "does not reach", "within noise"


def is_confirmation(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(ROLE) == CONFIRM


@dataclass(frozen=True)
class Estimate:
    """A seed-mean with its standard error, one-sided bounds and what they decide."""

    n: int
    mean: float
    sem: float
    lower: float  # one-sided lower bound at the rule's per-round level
    upper: float  # one-sided upper bound, same level
    p_reach: float  # P(true mean ≥ target) under a flat prior (t posterior)
    reached: int  # seeds whose own value is at the target
    fraction_low: float  # Clopper-Pearson interval on reached / n at the rule's level
    fraction_high: float
    verdict: str | None  # REACHES, NOT_REACHED, WITHIN_NOISE; None: more seeds are due

    @property
    def fraction(self) -> float:
        return self.reached / self.n if self.n else math.nan

    def describe(self) -> str:
        return f"{self.mean:.3f} ± {self.sem:.3f}, {self.n} seeds"


@dataclass(frozen=True)
class SequentialRule:
    """The confirmation rule of one study (see the module docstring)."""

    target: float
    level: float
    first: int
    step: int
    cap: int

    @classmethod
    def of(cls, search: SearchConfig) -> SequentialRule:
        return cls(
            search.target,
            search.confirm_level,
            search.confirm_seeds,
            search.confirm_step,
            search.confirm_max,
        )

    @property
    def looks(self) -> int:
        """How many rounds (and looks at the interval) the cap allows."""
        return 1 + math.ceil((self.cap - self.first) / self.step)

    @property
    def per_look(self) -> float:
        """The one-sided confidence of each look: 1 − α/K."""
        return 1 - (1 - self.level) / self.looks

    def estimate(self, values: Sequence[float], final: bool) -> Estimate:
        """The estimate from ``values``; ``final``: no more seeds will come (an undecided
        interval then is WITHIN_NOISE)."""
        x = np.asarray(values, dtype=float)
        n = len(x)
        mean = float(x.mean()) if n else math.nan
        sem = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        q = float(stats.t.ppf(self.per_look, n - 1)) if n > 1 else math.inf
        lower, upper = mean - q * sem, mean + q * sem
        if n < 2:
            p_reach = math.nan
        elif sem == 0:
            p_reach = float(mean >= self.target)
        else:
            p_reach = float(stats.t.cdf((mean - self.target) / sem, n - 1))
        reached = int((x >= self.target).sum())
        low, high = _fraction_interval(reached, n, 2 * self.per_look - 1)
        verdict = None
        if n >= 2 and lower >= self.target:
            verdict = REACHES
        elif n >= 2 and upper < self.target:
            verdict = NOT_REACHED
        elif final:
            verdict = WITHIN_NOISE
        return Estimate(n, mean, sem, lower, upper, p_reach, reached, low, high, verdict)

    def confirmed(self, values: Sequence[float]) -> Estimate:
        """The estimate after the rounds done so far (verdict None: another round is due)."""
        return self.estimate(values, final=len(values) >= self.cap)

    def next_round(self, done: int) -> range:
        """Indices k of the confirmation seeds of the next round after ``done`` seeds."""
        end = self.first if done < self.first else min(done + self.step, self.cap)
        return range(done, end)


def _fraction_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval on a fraction k/n (NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)
