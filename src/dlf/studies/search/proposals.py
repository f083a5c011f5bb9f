"""Which (A, T) the k-th trial at a width tries: the configured points, then the sampler's.

Slot k < len(search.points) is the k-th configured point (default: the papers' A = 10, T = 100).
After them, the ``sobol`` sampler gives slot k the (k − len(points))-th point of one scrambled
Sobol sequence over the log-scaled (A, T) box — the same sequence at every width, so a width's
trials never depend on which trials finished first or how many workers run. ``tpe`` and
``random`` leave those slots to Optuna's sampler.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, PartialFixedSampler, RandomSampler, TPESampler
from scipy.stats import qmc

from dlf.studies.search.config import LogRange, SearchConfig


@lru_cache(maxsize=64)
def _sobol(seed: int, m: int) -> np.ndarray:
    return qmc.Sobol(d=2, scramble=True, seed=seed).random_base2(m)


def _log_scale(u: float, bounds: LogRange) -> float:
    low, high = math.log(bounds.low), math.log(bounds.high)
    return float(math.exp(low + u * (high - low)))


def fixed_proposal(search: SearchConfig, slot: int) -> dict[str, float] | None:
    """The (A, T) of ``slot`` when it is fixed in advance; None when the sampler proposes it."""
    points = search.points or []
    if slot < len(points):
        point = points[slot]
        return {"amplitude": point.amplitude, "period": point.period}
    if search.sampler.name != "sobol":
        return None
    k = slot - len(points)
    u = _sobol(search.sampler.seed, max(1, math.ceil(math.log2(k + 1))))[k]
    return {
        "amplitude": _log_scale(float(u[0]), search.amplitude),
        "period": _log_scale(float(u[1]), search.period),
    }


def make_sampler(search: SearchConfig, fixed: dict[str, float], seed: int) -> BaseSampler:
    """Optuna's sampler for what ``fixed`` leaves open (Sobol slots are all fixed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        base: BaseSampler
        if search.sampler.name == "tpe":
            n_startup = search.sampler.startup_trials
            base = TPESampler(seed=seed, n_startup_trials=n_startup, constant_liar=True)
        else:
            base = RandomSampler(seed=seed)
        return PartialFixedSampler(fixed, base)
