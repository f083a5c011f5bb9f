"""When a spectrum analyzer samples: sparsely far from the edge of stability, every step near it.

The stability factor of member m at step t is s = η_t·λmax/c (c = 2 for gradient descent, 2 + 2β
with heavy-ball momentum; :mod:`dlf.analysis.stability`); the optimiser is unstable along the top
direction once s > 1. Every step after a sample whose factor, or the previous step's (the other
wall of a bounce, whose curvatures straddle 1), lies in the band [low, high] around 1 is sampled.
Outside it the next sample comes ``sparse_every`` steps later, or sooner where the factor,
extrapolated linearly from the last two samples, would reach the band earlier: after
``lead`` times the predicted number of steps (at least 1), so that a factor rising faster than
linearly still finds the band sampled. A member that jumps over the band between two samples
anyway (its factor grew more than twice as fast as predicted) shows as a crossing bracketed by
samples more than one step apart; :mod:`dlf.studies.replay` resolves those afterwards.

Each member has its own plan: in an ensemble a step is due when any member's sample is, and the
``lanczos`` analyzer then solves for those members alone where it tracks λmax (k = 1).
"""

from __future__ import annotations

import numpy as np


class AdaptiveCadence:
    """The sampling plan of one analyzer, per member: each member has its own next step, and a
    step is due when any member's is (the analyzer then solves for those members alone)."""

    def __init__(
        self, n_members: int, sparse_every: int, low: float, high: float, lead: float = 0.5
    ) -> None:
        if not 0 < low < 1 < high:
            raise ValueError(f"band [{low}, {high}] must contain 1 and start above 0")
        self.sparse_every, self.low, self.high, self.lead = sparse_every, low, high, lead
        self.next_step = np.zeros(n_members, dtype=np.int64)
        self._first = 0  # the earliest next step: due() runs at every training step
        self._step = np.full(n_members, -1, dtype=np.int64)  # each member's last sample
        self._factor = np.full(n_members, np.nan)

    def due(self, step: int) -> bool:
        return step >= self._first

    def members_due(self, step: int) -> np.ndarray:
        """Which members ``(member,)`` need a sample at ``step``."""
        return self.next_step <= step

    def observe(self, step: int, factor: np.ndarray, sampled: np.ndarray | None = None) -> None:
        """Take the factors ``(member,)`` measured at ``step`` for the ``sampled`` members (all
        when None; NaN: nothing to watch) and plan each one's next sample."""
        factor = np.asarray(factor, dtype=np.float64)
        sampled = np.ones(factor.shape, bool) if sampled is None else np.asarray(sampled, bool)
        inside = self._inside(factor) | ((self._step == step - 1) & self._inside(self._factor))
        gap = 1 if inside.all() else np.where(inside, 1, self._predicted_gap(step, factor))
        self.next_step = np.where(sampled, step + gap, self.next_step)
        self._first = int(self.next_step.min())
        self._step = np.where(sampled, step, self._step)
        self._factor = np.where(sampled, factor, self._factor)

    def _inside(self, factor: np.ndarray) -> np.ndarray:
        return (factor >= self.low) & (factor <= self.high)

    def _predicted_gap(self, step: int, factor: np.ndarray) -> np.ndarray:
        """Per member: ``lead`` × the steps it needs to reach the band at its last rate, at
        least 1, at most ``sparse_every`` (which it is without an earlier sample or a rate)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = (factor - self._factor) / (step - self._step)
            rising = np.where((factor < self.low) & (rate > 0), (self.low - factor) / rate, np.inf)
            falling = np.where(
                (factor > self.high) & (rate < 0), (factor - self.high) / -rate, np.inf
            )
        steps = np.nan_to_num(np.minimum(rising, falling), nan=np.inf)
        steps = np.where(self._step >= 0, steps, np.inf)
        predicted = np.maximum(1, np.floor(self.lead * np.minimum(steps, 2 * self.sparse_every)))
        return np.minimum(self.sparse_every, predicted).astype(np.int64)
