"""The edge of stability of the optimiser: the curvature λ above which a step overshoots.

On a quadratic of curvature λ, gradient descent with step η is stable while λ < 2/η. Heavy-ball
momentum (``v ← βv + g``, ``θ ← θ − ηv``, as ``torch.optim.SGD``) is stable while
λ < (2 + 2β)/η, and its Nesterov form (``θ ← θ − η(g + βv)``) while λ < (2 + 2β)/((1 + 2β)η):
the eigenvalue −1 of each iteration matrix crosses the unit circle there. Figures and the
bifurcation detector's ratio use λ_c = c/η with the ``c`` of the trace's optimiser.
"""

from __future__ import annotations

import json

import xarray as xr


def stability_factor(momentum: float = 0.0, nesterov: bool = False) -> float:
    """``c`` in λ_c = c/η: 2 for gradient descent, 2 + 2β for heavy ball, (2 + 2β)/(1 + 2β)
    for Nesterov momentum."""
    c = 2.0 + 2.0 * momentum
    return c / (1.0 + 2.0 * momentum) if nesterov else c


def trace_stability_factor(ds: xr.Dataset) -> float:
    """The ``c`` of the optimiser a trace was trained with (2 where its config is not stored)."""
    try:
        train = json.loads(ds.attrs["config"])["train"]
    except (KeyError, TypeError, ValueError):
        return 2.0
    return stability_factor(float(train.get("momentum", 0.0)), bool(train.get("nesterov", False)))


def threshold_label(c: float) -> str:
    """How figures name the threshold line: ``2/η``, or ``3.8/η`` for heavy ball with β = 0.9."""
    return f"{c:g}/η"
