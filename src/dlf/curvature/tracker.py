"""λmax of every member along a trajectory for about one Hessian-vector product per step.

Each step applies H once to every member's start vector v (unit): w = H v gives the Rayleigh
quotient θ = vᵀw and the residual ‖w − θ v‖. Where that is ≤ tol·|θ| — the test a full solve
stops on, so the eigenvalue error is at most residual²/gap as for a full solve — the member is
done after that one product. The others (the residual grew: the top eigenvector turned faster
than usual, as near an avoided crossing) go on with Lanczos from v, reusing w, for those members
alone, until their residual meets tol. The next step starts from w/‖w‖ (one power step, free: it
damps the bulk of the spectrum, which is most of a drifting vector's residual) or from the
Lanczos Ritz vector.

The start v is the last sample's, except in a period-2 bounce (samples at the three steps before,
whose λ turned at each): the iterate alternates between two walls and so does the Hessian, so the
start is the same wall's, from two steps before. The Lanczos loop is :mod:`dlf.curvature.top_pair`
(in the C kernel for the papers' network on a CPU); with one member the first product is simply
its first step.

A new top direction orthogonal to v (an exact crossing, which a generic one-parameter family of
Hessians avoids) shows in no residual of v: every ``period`` steps, and after a member's product
was not finite, the helper's full solve runs instead, whose warm start carries a random half
(see :func:`dlf.curvature.lanczos.warm_start`).

Given ``rows``, only those members are tracked (their products alone are computed); the others'
entries of the result are NaN, and the helper sees it as a partial spectrum (not this step's).
"""

from __future__ import annotations

import numpy as np
import torch

from dlf.curvature import top_pair
from dlf.curvature.helper import Curvature, LossKind
from dlf.curvature.lanczos import LanczosResult, Matvec


class LambdaMaxTracker:
    """Top Hessian eigenpair per member, refreshed by a full solve only when needed."""

    def __init__(self, tol: float, max_iter: int, loss: LossKind, period: int) -> None:
        self.tol, self.max_iter, self.loss, self.period = tol, max_iter, loss, period
        self.start: torch.Tensor | None = None  # (M, n) unit: where the next step begins
        self.before: torch.Tensor | None = None  # (M, n): the start the sample before left
        self.last_full = -period
        self._steps = np.empty((0, 3), np.int64)  # (M, 3) each member's last three samples
        self._values = np.empty((0, 3))  # (M, 3) and their λ

    def __call__(self, curvature: Curvature, rows: torch.Tensor | None = None) -> LanczosResult:
        """The top eigenpair at the helper's current step (values, vectors, residuals, matvecs)
        of every member, or of the members ``rows`` (indices; the others NaN, 0 matvecs)."""
        step = curvature.step
        if self.start is None or step - self.last_full >= self.period:
            result = curvature.spectrum(1, tol=self.tol, max_iter=self.max_iter, loss=self.loss)
            self.last_full = step
            self._remember(step, None, result, result.vectors[:, 0])
            rows = None
        else:
            result = self._track(curvature, rows)
            curvature.share(result, self.tol, self.loss, partial=rows is not None)
        tracked = result.values if rows is None else result.values[rows]
        if not bool(torch.isfinite(tracked).all()):
            self.last_full = step - self.period  # a member failed: solve afresh next step
        return result

    def _starts(self, step: int, rows: torch.Tensor | None) -> torch.Tensor:
        """Each member's start: the last sample's, or in a period-2 bounce (samples at the last
        three steps whose λ went down, up or up, down) the one before it — the same wall, where
        the Hessian is nearly the same (measured: 2.6 products a sample instead of 3.5)."""
        assert self.start is not None and self.before is not None
        picked = slice(None) if rows is None else rows.cpu().numpy()
        steps, lam = self._steps[picked], self._values[picked]
        turns = (lam[:, 2] - lam[:, 1]) * (lam[:, 1] - lam[:, 0]) < 0
        bouncing = (steps == step - np.arange(3, 0, -1)).all(axis=1) & turns
        start = self.start if rows is None else self.start[rows]
        if not bouncing.any():
            return start
        before = self.before if rows is None else self.before[rows]
        return torch.where(torch.as_tensor(bouncing, device=start.device)[:, None], before, start)

    def _remember(
        self, step: int, rows: torch.Tensor | None, result: LanczosResult, start: torch.Tensor
    ) -> None:
        """Keep the next start ``(len(rows), n)`` of the members ``rows`` (None: all) solved at
        ``step`` (``result`` theirs alone), the one it replaces, and the sample's step and λ."""
        values = result.values[:, 0].detach().cpu().numpy()
        if self.start is None:  # the first call: a full solve of every member
            self.start = self.before = start
            self._steps = np.full((len(values), 3), np.iinfo(np.int64).min // 2)
            self._values = np.full((len(values), 3), np.nan)
        assert self.before is not None
        if rows is None:
            self.before, self.start = self.start, start
            picked: slice | np.ndarray = slice(None)
        else:  # clones: either may be a view of a shared full solve's vectors
            self.before, self.start = self.before.clone(), self.start.clone()
            self.before[rows] = self.start[rows]
            self.start[rows] = start
            picked = rows.cpu().numpy()
        for history, new in ((self._steps, step), (self._values, values)):
            history[picked, :2] = history[picked, 1:]  # numpy copies overlapping slices safely
            history[picked, 2] = new

    def _track(self, curvature: Curvature, rows: torch.Tensor | None) -> LanczosResult:
        step = curvature.step
        v = self._starts(step, rows)
        matvec = curvature.product(self.loss) if rows is None else curvature.matvec(rows, self.loss)
        if len(v) == 1:  # one member: the one-product test is the loop's first step
            result, start = self._solve(curvature, matvec, v, None)
        else:  # members done after one product need no more of them
            w = matvec(v)
            theta = (v * w).sum(dim=-1)
            residual = (w - theta[:, None] * v).norm(dim=-1)
            rest = (~(residual <= self.tol * theta.abs())).nonzero()[:, 0]  # NaN: not converged
            if len(rest) < len(v):
                result, start = self._go_on(curvature, rows, v, w, theta, residual, rest)
            else:
                result, start = self._solve(curvature, matvec, v, w)
        self._remember(step, rows, result, start)
        assert self.start is not None
        return result if rows is None else _scatter(result, rows, self.start)

    def _solve(
        self, curvature: Curvature, matvec: Matvec, v: torch.Tensor, w: torch.Tensor | None
    ) -> tuple[LanczosResult, torch.Tensor]:
        """Every member of ``v`` solved by Lanczos from ``v`` (``w = H v`` if known); returns the
        result and the next starts: the power step w/‖w‖ where one product was enough."""
        result, w = top_pair.solve(matvec, v, self.tol, self.max_iter, curvature.generator, first=w)
        once = result.matvecs == 1
        start = result.vectors[:, 0]
        if bool(once.any()):
            start = torch.where(once[:, None], w / w.norm(dim=-1, keepdim=True), start)
        return result, start

    def _go_on(
        self,
        curvature: Curvature,
        rows: torch.Tensor | None,
        v: torch.Tensor,
        w: torch.Tensor,
        theta: torch.Tensor,
        residual: torch.Tensor,
        rest: torch.Tensor,
    ) -> tuple[LanczosResult, torch.Tensor]:
        """The result where only the members ``rest`` go on with Lanczos from ``v`` (reusing
        ``w = H v``), for those alone; the others keep the one product's pair. Returns it and
        each member's next start: w/‖w‖ (a power step) or the Ritz vector."""
        matvecs = torch.ones(v.shape[0], dtype=torch.long, device=v.device)
        values, vectors, residuals = theta[:, None], v[:, None], residual[:, None]
        start = w / w.norm(dim=-1, keepdim=True)
        if len(rest):
            members = rest if rows is None else rows[rest]
            more = top_pair.top_eigenpair(
                curvature.matvec(members, self.loss),
                v[rest],
                self.tol,
                self.max_iter,
                curvature.generator,
                first=w[rest],
            )
            values, vectors, residuals = values.clone(), vectors.clone(), residuals.clone()
            values[rest], vectors[rest], residuals[rest] = more.values, more.vectors, more.residuals
            matvecs[rest] = more.matvecs
            start[rest] = more.vectors[:, 0]
        return LanczosResult(values, vectors, residuals, matvecs), start


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
