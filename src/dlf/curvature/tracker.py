"""λmax of every member along a trajectory for about one Hessian-vector product per step.

Each step applies H once to every member's start vector v (unit): w = H v gives the Rayleigh
quotient θ = vᵀw and the residual ‖w − θ v‖. Where that is ≤ tol·|θ| — the test a full solve
stops on, so the eigenvalue error is at most residual²/gap as for a full solve — the member is
done after that one product. The others (the residual grew: the top eigenvector turned faster
than usual, as near an avoided crossing) go on with Lanczos from v, reusing w, for those members
alone, until their residual meets tol. The next step starts from w/‖w‖ (one power step, free: it
damps the bulk of the spectrum, which is most of a drifting vector's residual) or from the
Lanczos Ritz vector.

A new top direction orthogonal to v (an exact crossing, which a generic one-parameter family of
Hessians avoids) shows in no residual of v: every ``period`` steps, and after a member's product
was not finite, the helper's full solve runs instead, whose warm start carries a random half
(see :func:`dlf.curvature.lanczos.warm_start`).

Given ``rows``, only those members are tracked (their products alone are computed); the others'
entries of the result are NaN, and the helper sees it as a partial spectrum (not this step's).
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
        self.start: torch.Tensor | None = None  # (M, n) unit: where the next step begins
        self.last_full = -period

    def __call__(self, curvature: Curvature, rows: torch.Tensor | None = None) -> LanczosResult:
        """The top eigenpair at the helper's current step (values, vectors, residuals, matvecs)
        of every member, or of the members ``rows`` (indices; the others NaN, 0 matvecs)."""
        step = curvature.step
        if self.start is None or step - self.last_full >= self.period:
            result = curvature.spectrum(1, tol=self.tol, max_iter=self.max_iter, loss=self.loss)
            self.last_full = step
            self.start = result.vectors[:, 0]
            rows = None
        else:
            result = self._track(curvature, rows)
            curvature.share(result, self.tol, self.loss, partial=rows is not None)
        tracked = result.values if rows is None else result.values[rows]
        if not bool(torch.isfinite(tracked).all()):
            self.last_full = step - self.period  # a member failed: solve afresh next step
        return result

    def _track(self, curvature: Curvature, rows: torch.Tensor | None) -> LanczosResult:
        assert self.start is not None
        v = self.start if rows is None else self.start[rows]
        w = curvature.hvp(v, self.loss) if rows is None else curvature.matvec(rows, self.loss)(v)
        theta = (v * w).sum(dim=-1)
        residual = (w - theta[:, None] * v).norm(dim=-1)
        matvecs = torch.ones(v.shape[0], dtype=torch.long, device=v.device)
        values, vectors, residuals = theta[:, None], v[:, None], residual[:, None]
        start = w / w.norm(dim=-1, keepdim=True)
        rest = (~(residual <= self.tol * theta.abs())).nonzero()[:, 0]  # NaN: not converged
        if len(rest):
            members = rest if rows is None else rows[rest]
            more = lanczos.top_eigenpairs(
                curvature.matvec(members, self.loss),
                v[rest],
                1,
                self.tol,
                self.max_iter,
                curvature.generator,
                first=w[rest],
            )
            values, vectors, residuals = values.clone(), vectors.clone(), residuals.clone()
            values[rest], vectors[rest], residuals[rest] = more.values, more.vectors, more.residuals
            matvecs[rest] = more.matvecs
            start[rest] = more.vectors[:, 0]
        if rows is None:
            self.start = start
            return LanczosResult(values, vectors, residuals, matvecs)
        self.start = self.start.clone()  # it may be a view of a shared full solve's vectors
        self.start[rows] = start
        return _scatter(LanczosResult(values, vectors, residuals, matvecs), rows, self.start)


def _scatter(part: LanczosResult, rows: torch.Tensor, like: torch.Tensor) -> LanczosResult:
    """``part`` (of the members ``rows``) as a result for all members: NaN and 0 matvecs else."""
    m = like.shape[0]
    values = part.values.new_full((m, 1), float("nan"))
    vectors = part.vectors.new_full((m, 1, like.shape[1]), float("nan"))
    residuals = values.clone()
    matvecs = part.matvecs.new_zeros(m)
    values[rows], vectors[rows], residuals[rows], matvecs[rows] = (
        part.values,
        part.vectors,
        part.residuals,
        part.matvecs,
    )
    return LanczosResult(values, vectors, residuals, matvecs)
