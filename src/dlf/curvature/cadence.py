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
"""

from __future__ import annotations

import math

import numpy as np


class AdaptiveCadence:
    """The sampling plan of one analyzer for all members; the ensemble is sampled when any
    member needs it (one batched solve serves all)."""

    def __init__(self, sparse_every: int, low: float, high: float, lead: float = 0.5) -> None:
        if not 0 < low < 1 < high:
            raise ValueError(f"band [{low}, {high}] must contain 1 and start above 0")
        self.sparse_every, self.low, self.high, self.lead = sparse_every, low, high, lead
        self.next_step = 0
        self._last: tuple[int, np.ndarray] | None = None

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def observe(self, step: int, factor: np.ndarray) -> int:
        """Take the factors ``(member,)`` measured at ``step`` (NaN: no member to watch) and
        return the next step to sample."""
        factor = np.asarray(factor, dtype=np.float64)
        gap = self.sparse_every
        inside = self._inside(factor)
        if self._last is not None and self._last[0] == step - 1:
            inside |= self._inside(self._last[1])
        if inside.any():
            gap = 1
        elif self._last is not None:
            gap = min(gap, self._predicted_gap(step, factor))
        self._last = (step, factor)
        self.next_step = step + gap
        return self.next_step

    def _inside(self, factor: np.ndarray) -> np.ndarray:
        return (factor >= self.low) & (factor <= self.high)

    def _predicted_gap(self, step: int, factor: np.ndarray) -> int:
        """``lead`` × the fewest steps any member needs to reach the band at its last rate."""
        before_step, before = self._last  # type: ignore[misc]
        rate = (factor - before) / (step - before_step)
        with np.errstate(divide="ignore", invalid="ignore"):
            rising = np.where((factor < self.low) & (rate > 0), (self.low - factor) / rate, np.inf)
            falling = np.where(
                (factor > self.high) & (rate < 0), (factor - self.high) / -rate, np.inf
            )
        steps = np.nanmin(np.concatenate([rising, falling, [np.inf]]))
        if not math.isfinite(steps):
            return self.sparse_every
        return max(1, int(self.lead * steps))
