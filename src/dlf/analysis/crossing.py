"""Where λmax crosses the edge of stability, against where the bounce becomes visible.

Three estimators of the threshold of one instability, which differ (docs/concepts.md):

* the **crossing**: the step at which the stability factor s = η_t·λmax/c of the sampled
  spectrum reaches 1 for the last time before the visible onset (on the upper of the two walls
  once the iterate bounces), interpolated linearly between the last sample below 1 and the first
  at or above it; *resolved to the step* when those two samples are consecutive steps. The Ritz
  value θ never exceeds λmax and λmax ≤ θ + ε (ε the residual, the analyzer's ``error_bound``),
  so the true crossing lies between the crossing of θ + ε (``crossing_earliest``) and that of θ.
* the **visible onset**: the bifurcation detector's first bouncing step (dlf.analysis.bifurcation).
* the **two-wall mean**: λmax at the visible onset averaged over even and odd steps' samples
  (the detector's ``lambda_onset``), whose ratio is ≈ 0.97 on the papers' runs: by the onset the
  iterate bounces between walls whose curvatures straddle c/η.

Between crossing and visible onset the bounce grows: along the top eigenvector the gradient
component p_t obeys p_{t+1} ≈ (1 − ηλ)·p_t plus a slow drift, so its step-to-step difference
grows by r = |1 − ηλ| per step for gradient descent (heavy ball β: the root −r of
μ² − (1 + β − ηλ)μ + β, so ηλ = (1 + r)(r + β)/r). A least-squares fit of log|p_t − p_{t−1}| over
that stretch gives r and an estimate of λ independent of the eigensolver's value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats

from dlf.analysis.bifurcation import two_walls
from dlf.analysis.stability import trace_stability_factor
from dlf.errors import DlfError

MIN_FIT = 3  # consecutive differences a growth-rate fit needs


@dataclass(frozen=True)
class Crossing:
    """The upward crossing of s = 1 an onset follows, in a window of samples."""

    step: float  # interpolated crossing of the Ritz values' factor
    earliest: float  # the same for the upper bound θ + ε (NaN: already above at the window start)
    before: int  # last sample below 1
    after: int  # first sample at or above 1
    factor_after: float  # s at ``after``

    @property
    def resolved(self) -> bool:
        """Bracketed by consecutive steps: the crossing is known to the step."""
        return self.after - self.before == 1


def _interpolate(steps: np.ndarray, factor: np.ndarray, i: int) -> float:
    """Step where the line through samples i − 1 and i reaches 1."""
    t0, t1, s0, s1 = steps[i - 1], steps[i], factor[i - 1], factor[i]
    return float(t0 + (1.0 - s0) * (t1 - t0) / (s1 - s0))


def upper_wall(steps: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The larger of each sample's factor and the previous step's (where that was sampled): a
    bounce alternates between walls whose curvatures straddle 1, and this follows the upper one."""
    upper = factor.copy()
    consecutive = np.flatnonzero(np.diff(steps) == 1) + 1
    upper[consecutive] = np.fmax(factor[consecutive], factor[consecutive - 1])
    return upper


def _last_up(factor: np.ndarray, until: int | None = None) -> int:
    """Index of the last sample ≥ 1 right after one below 1 (up to index ``until``); −1 if none
    (above from the first sample: the crossing came before the window)."""
    up = np.flatnonzero((factor[1:] >= 1.0) & (factor[:-1] < 1.0)) + 1
    if until is not None:
        up = up[up <= until]
    return int(up[-1]) if up.size else -1


def last_crossing(steps: np.ndarray, factor: np.ndarray, bound: np.ndarray) -> Crossing | None:
    """The crossing of s = 1 that the onset follows: the last upward crossing of the upper wall
    (:func:`upper_wall`) in samples ``steps`` (increasing) with factors ``factor`` and the
    factor's error bound ``bound`` (η_t·ε/c). The last, not the first: an early transient above
    1 that fell back is not this instability's. None where the upper wall does not cross."""
    upper = upper_wall(steps, factor)
    i = _last_up(upper)
    if i < 0:
        return None
    crossing = _interpolate(steps, upper, i)
    high = upper_wall(steps, factor + np.nan_to_num(bound))
    j = _last_up(high, until=i)
    earliest = _interpolate(steps, high, j) if j >= 0 else float("nan")
    return Crossing(
        step=crossing,
        earliest=min(earliest, crossing),
        before=int(steps[i - 1]),
        after=int(steps[i]),
        factor_after=float(upper[i]),
    )


def growth_rate(
    steps: np.ndarray, along: np.ndarray, first: float, last: int
) -> tuple[float, float, int]:
    """r = exp(slope) of log|p_t − p_{t−1}| over consecutive samples with first ≤ t − 1, t ≤ last,
    its standard error (from the slope's) and the number of differences; NaN below MIN_FIT."""
    consecutive = np.flatnonzero(np.diff(steps) == 1) + 1
    keep = consecutive[(steps[consecutive - 1] >= first) & (steps[consecutive] <= last)]
    diff = np.abs(along[keep] - along[keep - 1])
    ok = np.isfinite(diff) & (diff > 0)
    t, diff = steps[keep][ok], diff[ok]
    if t.size < MIN_FIT:
        return float("nan"), float("nan"), int(t.size)
    fit = stats.linregress(t, np.log(diff))
    rate = float(np.exp(fit.slope))
    return rate, rate * float(fit.stderr), int(t.size)


def lambda_from_growth(rate: float, eta: float, momentum: float = 0.0) -> float:
    """λ whose period-2 mode grows by ``rate`` per step (gradient descent, heavy ball β)."""
    return (1 + rate) * (rate + momentum) / (rate * eta)


def _momentum(trace: xr.Dataset) -> tuple[float, bool]:
    """β and Nesterov of the trace's optimiser (0, False where its config is not stored)."""
    try:
        train = json.loads(trace.attrs["config"])["train"]
    except (KeyError, TypeError, ValueError):
        return 0.0, False
    return float(train.get("momentum", 0.0)), bool(train.get("nesterov", False))


def _member_samples(trace: xr.Dataset, spectrum: str, member: int) -> dict[str, np.ndarray]:
    """One member's samples: steps, λmax, factor, its bound, gradient along the top vector."""
    sel = {"member": member}
    lam = trace[f"{spectrum}_eigenvalues"].isel(sel).values[:, 0]
    factor = trace[f"{spectrum}_factor"].isel(sel).values
    with np.errstate(invalid="ignore", divide="ignore"):
        per_lambda = np.where(lam != 0, factor / lam, np.nan)  # η_t/c at each sample
    sampled = np.isfinite(factor)  # merged replays leave other members' rows NaN
    return {
        "steps": trace[f"{spectrum}_step"].values[sampled],
        "lambda": lam[sampled],
        "factor": factor[sampled],
        "bound": (trace[f"{spectrum}_error_bound"].isel(sel).values * per_lambda)[sampled],
        "along": trace[f"{spectrum}_grad_along_top"].isel(sel).values[sampled],
    }


def find_crossings(
    trace: xr.Dataset, spectrum: str = "lanczos", prefix: str = "bifurcation"
) -> xr.Dataset:
    """Per bifurcation event of ``trace``: its crossing, delay, ratios and growth rate.

    The window searched for an event's crossing runs from the end of the member's previous event
    (or the detector's ``lambda_window`` before the onset, whichever is later) to the onset.
    Needs the spectrum analyzer's ``factor`` (this version's ``lanczos``) and the detector's
    events; variables are ``crossing_*`` along ``<prefix>_event``.
    """
    for name in (f"{prefix}_start", f"{spectrum}_factor"):
        if name not in trace:
            raise DlfError(
                f"trace has no {name}: crossings need the bifurcation analyzer and this "
                f"version's {spectrum} analyzer (which records the stability factor)"
            )
    dim = f"{prefix}_event"
    member = trace[f"{prefix}_member"].values
    start = trace[f"{prefix}_start"].values
    end = trace[f"{prefix}_end"].values
    eta = trace[f"{prefix}_eta"].values
    settings = json.loads(trace[f"{prefix}_start"].attrs.get("detector_settings", "{}"))
    window = int(settings.get("lambda_window", 250))
    c = trace_stability_factor(trace)
    momentum, nesterov = _momentum(trace)
    n = len(member)
    out = {key: np.full(n, np.nan) for key in COLUMNS}
    samples = {m: _member_samples(trace, spectrum, int(m)) for m in np.unique(member)}
    for e in range(n):
        mine = (member == member[e]) & (end < start[e])
        lo = max(start[e] - window, int(end[mine].max()) + 1 if mine.any() else 0)
        row = _event(samples[member[e]], lo, int(start[e]), window)
        row["ratio_onset"] = row["lambda_onset"] * eta[e] / c
        if not nesterov:
            row["lambda_growth"] = lambda_from_growth(row["growth_rate"], eta[e], momentum)
        for key, value in row.items():
            out[key][e] = value
    return xr.Dataset(
        {
            f"crossing_{key}": xr.DataArray(out[key], dims=(dim,), attrs={"long_name": text})
            for key, text in COLUMNS.items()
        }
    )


def _event(s: dict[str, np.ndarray], lo: int, start: int, window: int) -> dict[str, float]:
    """One event's columns from its member's samples ``s``, searched from ``lo`` to ``start``."""
    near = (s["steps"] >= lo) & (s["steps"] <= start)
    close = np.abs(s["steps"] - start) <= window  # the detector's samples, and replays'
    row = {
        "lambda_onset": two_walls(s["steps"][close], s["lambda"][close, None], start)[0],
        "searched_from": lo,
        "max_factor": np.max(s["factor"][near], initial=-np.inf),
        "last_sample": np.max(s["steps"][near], initial=-1),
    }
    found = last_crossing(s["steps"][near], s["factor"][near], s["bound"][near])
    if found is None:
        return row | {"growth_rate": np.nan}
    rate, rate_se, used = growth_rate(s["steps"], s["along"], found.step, start)
    fitted = (s["steps"] >= found.step) & (s["steps"] <= start)
    return row | {
        "step": found.step,
        "before": found.before,
        "earliest": found.earliest,
        "bracket": found.after - found.before,
        "ratio": found.factor_after,
        "delay": start - found.step,
        "growth_rate": rate,
        "growth_rate_se": rate_se,
        "growth_n": used,
        "lambda_ritz": float(np.nanmean(s["lambda"][fitted])) if fitted.any() else np.nan,
    }


COLUMNS = {
    "step": "step where η_t·λmax/c (upper wall) last reaches 1 before the onset (interpolated)",
    "earliest": "the same for λmax's upper bound λ + error_bound: the crossing is in [this, step]",
    "before": "last sample below 1 before the crossing",
    "searched_from": "first step searched: the previous event's end or lambda_window before",
    "max_factor": "largest sampled η_t·λmax/c in the searched steps (≥ 1 and no crossing: the "
    "factor was above 1 from the first sample searched)",
    "last_sample": "last sample at or before the onset (-1: none)",
    "bracket": "steps between the samples around the crossing (1: resolved to the step)",
    "ratio": "η_t·λmax/c at the first sample at or above 1",
    "delay": "visible onset − crossing, in steps",
    "lambda_onset": "two-wall mean λmax at the visible onset, from these samples (with replays')",
    "ratio_onset": "that × η/c (the detector's ratio)",
    "growth_rate": "bounce growth per step r between crossing and onset (fit of log|Δp|)",
    "growth_rate_se": "standard error of r",
    "growth_n": "consecutive-step differences the fit of r used",
    "lambda_growth": "λ implied by r: (1 + r)/η for gradient descent",
    "lambda_ritz": "mean sampled λmax over the same steps, to compare",
}
