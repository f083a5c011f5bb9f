"""Analyses of finished traces and the algorithms analyzer plugins run online.

* :mod:`dlf.analysis.bifurcation`: period-doubling (edge-of-stability) events in loss series and
  the Hessian eigenvalues at their onsets.
* :mod:`dlf.analysis.stability`: the optimiser's edge of stability, λ_c = c/η.
* :mod:`dlf.analysis.threshold`: the curvature threshold of those onsets versus the learning rate
  (fit and per-member onsets; :mod:`dlf.studies.threshold` runs the study).
"""

from dlf.analysis.bifurcation import (
    BifurcationDetector,
    BifurcationSettings,
    Event,
    events_dataset,
    find_bifurcations,
)
from dlf.analysis.stability import stability_factor, threshold_label, trace_stability_factor

__all__ = [
    "BifurcationDetector",
    "BifurcationSettings",
    "Event",
    "events_dataset",
    "find_bifurcations",
    "stability_factor",
    "threshold_label",
    "trace_stability_factor",
]
