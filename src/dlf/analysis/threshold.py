"""The curvature threshold of instabilities versus the learning rate (2024 Fig. 4, 2021 Fig. 5).

Offline analysis of finished traces: each member's λmax at its first instability (or the mean
over all its instabilities), fitted as λ = c·η^b by least squares in log-log (edge of stability
predicts b = −1, c = 2), and the ratio λ·η/2 averaged over members. Per η the ratios at the
visible onset (the two-wall mean) and at the crossing of 2/η (:mod:`dlf.analysis.crossing`) and
the delay between them are summarised as distributions: median, interquartile range and a 95 %
percentile-bootstrap interval of the median. The study that trains one ensemble per η and
applies this is :mod:`dlf.studies.threshold`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr
from scipy import stats

from dlf.errors import DlfError

CROSSING = {  # per-event crossing columns → (member variable, meaning)
    "ratio": ("ratio_crossing", "η_t·λmax/2 at the first sample at or above the crossing"),
    "step": ("crossing_step", "step where η_t·λmax/2 reaches 1 (interpolated)"),
    "delay": ("delay", "visible onset − crossing, in steps"),
    "bracket": ("crossing_bracket", "steps between the samples around it (1: to the step)"),
}
SUMMARISED = {  # member variable → (summary name in threshold.nc, meaning)
    "ratio": ("ratio_onset", "λ·η/2 at the visible onset (two-wall mean)"),
    "ratio_crossing": ("ratio_crossing", "λ·η/2 at the first sample at or above the crossing"),
    "delay": ("delay", "steps from the crossing to the visible onset"),
}
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class ThresholdFit:
    """λ = prefactor·η^exponent fitted in log-log, and the mean of λ·η/2 with its error."""

    exponent: float
    exponent_se: float
    prefactor: float
    ratio_mean: float
    ratio_sem: float
    n: int


def fit_threshold(eta: np.ndarray, lam: np.ndarray) -> ThresholdFit:
    """Least squares of log λ on log η over the points with finite, positive λ.

    ``exponent_se`` is the usual standard error of the slope; ``ratio_sem`` the standard error
    of the mean of λ·η/2. Needs points at two or more learning rates.
    """
    eta, lam = np.asarray(eta, dtype=float), np.asarray(lam, dtype=float)
    ok = np.isfinite(lam) & (lam > 0)
    eta, lam = eta[ok], lam[ok]
    if len(np.unique(eta)) < 2:
        raise DlfError(
            f"threshold fit needs instabilities at two or more learning rates; found "
            f"{len(np.unique(eta))} among {ok.sum()} members with a measured onset"
        )
    fit = stats.linregress(np.log(eta), np.log(lam))
    ratio = lam * eta / 2
    sem = float(ratio.std(ddof=1) / np.sqrt(len(ratio))) if len(ratio) > 1 else 0.0
    return ThresholdFit(
        exponent=float(fit.slope),
        exponent_se=float(fit.stderr),
        prefactor=float(np.exp(fit.intercept)),
        ratio_mean=float(ratio.mean()),
        ratio_sem=sem,
        n=len(lam),
    )


def member_onsets(
    trace: xr.Dataset, onset: Literal["first", "mean"], crossings: xr.Dataset | None = None
) -> xr.Dataset:
    """Per member of one trace: η, A, T, seed, λ at onset (first or mean), λ·η/2, event count,
    and whether it diverged. A diverged member's onset is NaN, so that no mean counts it: its
    last instabilities are the run away, not the edge of stability being measured.

    With ``crossings`` (:func:`dlf.analysis.crossing.find_crossings` of the trace, or
    :func:`dlf.studies.replay.replay`'s), λ at onset is their two-wall mean (from the samples
    with any replay's), and the same event's (or mean over events') ratio at the crossing of
    2/η, its step and the delay to the visible onset are added; NaN without."""
    if "bifurcation_start" not in trace:
        raise DlfError("trace has no bifurcation_* variables; run with the bifurcation analyzer")
    m = trace.sizes["member"]
    member = trace["bifurcation_member"].values
    start = trace["bifurcation_start"].values
    lam = trace["bifurcation_lambda_onset"].values
    eta_onset = trace["bifurcation_eta"].values
    diverged = trace["diverged_step"].values >= 0 if "diverged_step" in trace else np.zeros(m, bool)
    if crossings is not None:  # the two-wall mean from the samples with the replays'
        lam = np.where(
            np.isfinite(crossings["crossing_lambda_onset"]), crossings["crossing_lambda_onset"], lam
        )
    per_event = {"lambda_onset": lam, "ratio": lam * eta_onset / 2}
    for key, (name, _) in CROSSING.items():
        missing = np.full(len(member), np.nan)
        per_event[name] = crossings[f"crossing_{key}"].values if crossings is not None else missing
    out = {key: np.full(m, np.nan) for key in per_event}
    for i in range(m):
        mine = np.flatnonzero(member == i)
        if mine.size == 0 or diverged[i]:
            continue
        chosen = mine[[np.argmin(start[mine])]] if onset == "first" else mine
        with warnings.catch_warnings():  # a member whose events all lack a crossing: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            for key, values in per_event.items():
                out[key][i] = np.nanmean(values[chosen])
    return xr.Dataset(
        {
            "lambda_onset": (
                "member",
                out["lambda_onset"],
                {"long_name": f"λmax at onset ({onset})"},
            ),
            "ratio": ("member", out["ratio"], {"long_name": "λ_onset·η/2 (two-wall mean)"}),
            **{
                name: ("member", out[name], {"long_name": text}) for name, text in CROSSING.values()
            },
            "n_events": ("member", np.bincount(member, minlength=m)),
            "diverged": ("member", diverged, {"long_name": "diverged: left out of every mean"}),
            "eta": ("member", trace["eta"].values),
            "amplitude": ("member", trace["amplitude"].values),
            "period": ("member", trace["period"].values, {"units": "step"}),
            "seed": ("member", trace["seed"].values),
        }
    )


def threshold_dataset(
    members: xr.Dataset, onset: Literal["first", "mean"], attrs: Mapping[str, str] | None = None
) -> xr.Dataset:
    """Per-member onsets (from :func:`member_onsets` with ``onset``), per-η mean ± sem, the fit
    and the mean ratio, as one dataset (a threshold study's ``threshold.nc``); ``attrs`` (e.g.
    the study's settings) are added to its attributes."""
    eta, lam = members["eta"].values, members["lambda_onset"].values
    fit = fit_threshold(eta, lam)
    etas = np.unique(eta)
    per_eta = [lam[(eta == e) & np.isfinite(lam)] for e in etas]
    diverged = members["diverged"].values
    mean = np.array([v.mean() if v.size else np.nan for v in per_eta])
    sem = np.array([v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0 for v in per_eta])
    out = members.rename_dims(member="study_member").rename_vars(eta="member_eta")
    out = out.assign(
        lambda_mean=("eta", mean, {"long_name": "mean λmax at onset over members"}),
        lambda_sem=("eta", sem, {"long_name": "error of that mean"}),
        n_measured=("eta", np.array([v.size for v in per_eta])),
        n_diverged=(
            "eta",
            np.array([int(diverged[eta == e].sum()) for e in etas]),
            {"long_name": "members that diverged, left out of the means and the fit"},
        ),
        exponent=((), fit.exponent, {"long_name": "b in λ = c·η^b (least squares, log-log)"}),
        exponent_se=((), fit.exponent_se, {"long_name": "standard error of b"}),
        prefactor=((), fit.prefactor, {"long_name": "c in λ = c·η^b"}),
        ratio_mean=((), fit.ratio_mean, {"long_name": "mean λ_onset·η/2 over members"}),
        ratio_sem=((), fit.ratio_sem, {"long_name": "error of that mean"}),
        n_fitted=((), fit.n, {"long_name": "members with a measured onset"}),
    ).assign_coords(eta=etas)
    for key, (name, text) in SUMMARISED.items():
        out = out.assign(distribution(members[key].values, eta, etas, name, text))
    out.attrs.update(
        {
            "title": "λmax at the onset of instabilities versus the learning rate",
            **(attrs or {}),
            "onset": onset,
        }
    )
    return out


def summary(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles and a percentile-bootstrap interval of the median of the finite values
    (the interval needs two or more; NaN below), and how many there were."""
    values = values[np.isfinite(values)]
    nan = float("nan")
    if values.size == 0:
        return dict.fromkeys(("median", "q25", "q75", "ci_low", "ci_high"), nan) | {"n": 0}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    low = high = nan
    if values.size > 1 and np.ptp(values) > 0:
        boot = stats.bootstrap(
            (values,),
            np.median,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(0),
        )
        low, high = boot.confidence_interval
    elif values.size > 1:
        low = high = float(values[0])
    return {
        "median": median,
        "q25": q25,
        "q75": q75,
        "ci_low": low,
        "ci_high": high,
        "n": values.size,
    }


def distribution(
    values: np.ndarray, eta: np.ndarray, etas: np.ndarray, name: str, text: str
) -> dict[str, tuple[str, np.ndarray, dict[str, str]]]:
    """Per η of ``etas``: :func:`summary` of the members' ``values`` as ``<name>_<stat>``."""
    rows = [summary(values[eta == e]) for e in etas]
    meaning = {
        "median": f"median over members of {text}",
        "q25": "its first quartile",
        "q75": "its third quartile",
        "ci_low": f"{CONFIDENCE:.0%} percentile-bootstrap interval of the median, low",
        "ci_high": "the same, high",
        "n": "members it rests on (diverged and unmeasured ones left out)",
    }
    return {
        f"{name}_{key}": ("eta", np.array([row[key] for row in rows]), {"long_name": meaning[key]})
        for key in meaning
    }
