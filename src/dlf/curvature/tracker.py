"""λmax of every member along a trajectory for about one Hessian-vector product per step.

Between full solves, each step runs Lanczos from the previous step's top eigenvector v alone
(no random half, see :func:`dlf.curvature.lanczos.warm_start`). Its first product w = H v gives the
Rayleigh quotient θ = vᵀw and the residual ‖w − θ v‖; where that is ≤ tol·|θ| (the test a full
solve stops on) the member stops after that one product, with an eigenvalue error of at most
residual²/gap as for a full solve; otherwise Lanczos goes on from v until it is. Every
``period`` steps a full solve with the crossing guard runs instead, since a new top direction
nearly orthogonal to v (eigenvalues crossing) shows in no residual of v.
"""

from __future__ import annotations

import torch

from dlf.curvature import lanczos
from dlf.curvature.helper import Curvature, LossKind
from dlf.curvature.lanczos import LanczosResult


class LambdaMaxTracker:
    """Top Hessian eigenpair per member, refreshed by a full solve only when needed."""

    def __init__(self, tol: float, max_iter: int, loss: LossKind, period: int) -> None:
        self.tol, self.max_iter, self.loss, self.period = tol, max_iter, loss, period
        self.vectors: torch.Tensor | None = None  # (M, 1, n): the last step's eigenvectors
        self.last_full = -period

    def __call__(self, curvature: Curvature) -> LanczosResult:
        """The top eigenpair at the helper's current step (values, vectors, residuals, matvecs)."""
        step = curvature.step
        if self.vectors is not None and step - self.last_full < self.period:
            result = lanczos.top_eigenpairs(
                lambda v: curvature.hvp(v, self.loss),
                self.vectors[:, 0],
                1,
                self.tol,
                self.max_iter,
                curvature.generator,
            )
            curvature.share(result, self.tol, self.loss)
        else:
            result = curvature.spectrum(1, tol=self.tol, max_iter=self.max_iter, loss=self.loss)
            self.last_full = step
        if bool(torch.isfinite(result.values).all()):
            self.vectors = result.vectors
        else:
            self.last_full = step - self.period  # a member failed: solve afresh next step
        return result
