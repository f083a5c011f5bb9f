"""The ``lanczos`` analyzer: top-k Hessian eigenvalues of every member along training.

At each due step it asks the shared curvature helper for the top-k eigenpairs of the Hessian of
the loss being minimised (F at the current Γ, or the static loss), so other analyzers at that
step (landscape, bifurcation) reuse the same solve and the next solve is warm-started from it.
Optionally it also records the whole spectrum's density by stochastic Lanczos quadrature.

With ``cadence: adaptive`` it samples every ``every`` steps while the stability factor η_t·λmax/c
is far from 1 and every step inside ``band`` (:class:`dlf.curvature.cadence.AdaptiveCadence`),
per member: with k = 1 a step solves only the members due then (the others read NaN);
``windows`` adds step ranges sampled at every step (a replay's, :mod:`dlf.studies.replay`). Each
sample stores λmax's certificate: the residual bound, the matvecs, whether it converged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlf import plugin
from dlf.plugin import DEFAULT_MAX_ITER, DEFAULT_TOL, AdaptiveCadence, LambdaMaxTracker


class DensityOptions(BaseModel):
    """Stochastic Lanczos quadrature of the whole Hessian spectrum."""

    model_config = ConfigDict(extra="forbid")
    probes: int = Field(4, ge=1, description="random probe vectors averaged over")
    order: int = Field(30, ge=2, description="Lanczos steps (quadrature nodes) per probe")
    every: int | None = Field(
        None, ge=1, description="density cadence in steps; null: the analyzer's every"
    )


class LanczosOptions(plugin.AnalyzerOptions):
    """How many eigenvalues, how accurately, of which loss, and how often."""

    k: int = Field(3, ge=1, description="number of top eigenvalues recorded")
    tol: float = Field(
        DEFAULT_TOL, gt=0, lt=1, description="stop when each Ritz residual ≤ tol·‖H‖"
    )
    max_iter: int = Field(DEFAULT_MAX_ITER, ge=1, description="most matvecs per solve")
    mode: Literal["lanczos", "exact"] = Field(
        "lanczos", description="exact: dense Hessian and eigh (small models only)"
    )
    loss: Literal["dynamical", "static"] = Field(
        "dynamical", description="Hessian of F at the current Γ (the papers) or of the static loss"
    )
    density: DensityOptions | None = Field(None, description="spectral density; null: off")
    track: bool | None = Field(
        None,
        description="λmax by the tracker (≈ one HVP per step, k = 1 only); null: when k = 1, "
        "mode = lanczos and steps in a row are sampled (every = 1, adaptive or windows)",
    )
    track_period: int = Field(50, ge=1, description="steps between the tracker's full solves")
    cadence: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="adaptive: every `every` steps far from the edge of stability, every step "
        "while η_t·λmax/c lies in `band`",
    )
    band: tuple[float, float] = Field(
        (0.9, 1.15), description="[low, high] of η_t·λmax/c sampled at every step (adaptive)"
    )
    windows: list[tuple[int, int]] = Field(
        [], description="[first, last] step ranges sampled at every step as well (replays)"
    )
    stop_after_windows: bool = Field(
        False, description="end the run after the last window's last step (replays)"
    )

    @field_validator("band")
    @classmethod
    def _around_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < 1 < value[1]:
            raise ValueError("must be [low, high] with 0 < low < 1 < high")
        return value

    @field_validator("windows")
    @classmethod
    def _ordered(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if any(not 0 <= first <= last for first, last in value):
            raise ValueError("each window must be [first, last] with 0 ≤ first ≤ last")
        return value


class LanczosAnalyzer(plugin.Analyzer[LanczosOptions]):
    """Records ``lanczos_eigenvalues``, ``lanczos_residuals``, ``lanczos_matvecs`` and, for λmax,
    ``lanczos_error_bound``, ``lanczos_converged``, ``lanczos_factor``,
    ``lanczos_grad_along_top``."""

    def memory(self) -> dict[str, float]:
        """k Ritz vectors (and as many Lanczos vectors) of every member's parameters."""
        run = self.run
        size = torch.empty((), dtype=run.dtype).element_size()
        return {"k": 2.0 * self.options.k * run.n_members * run.model.n_params * size}

    def __init__(self, name: str, options: LanczosOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        self.steps: list[int] = []
        self.records: list[tuple[np.ndarray, ...]] = []
        self.density_steps: list[int] = []
        self.densities: list[tuple[np.ndarray, np.ndarray]] = []
        opts = self.options
        track = opts.track
        if track is None:
            in_a_row = opts.every == 1 or opts.cadence == "adaptive" or bool(opts.windows)
            track = opts.k == 1 and opts.mode == "lanczos" and in_a_row
        if track and (opts.k != 1 or opts.mode != "lanczos"):
            raise ValueError("lanczos: track needs k = 1 and mode = lanczos")
        self.tracker = (
            LambdaMaxTracker(opts.tol, opts.max_iter, opts.loss, opts.track_period)
            if track
            else None
        )
        self.cadence = (
            AdaptiveCadence(run.n_members, opts.every, *opts.band)
            if opts.cadence == "adaptive"
            else None
        )
        train = run.config.train
        self.factor = plugin.stability_factor(train.momentum, train.nesterov)
        self._top: torch.Tensor | None = None  # each member's last sampled top vector
        self._flipped = np.zeros(run.n_members, bool)  # its sign, to follow the one before

    def spectrum_due(self, step: int) -> bool:
        if any(first <= step <= last for first, last in self.options.windows):
            return True
        if self.cadence is not None:
            return self.cadence.due(step)
        return step % self.options.every == 0

    def _rows_due(self, step: int) -> torch.Tensor | None:
        """The members the adaptive cadence wants at ``step`` where only some do and the tracker
        can solve for them alone; None: every member (a window, a fixed cadence, k > 1)."""
        if self.cadence is None or self.tracker is None:
            return None
        if any(first <= step <= last for first, last in self.options.windows):
            return None
        due = self.cadence.members_due(step)
        if due.all():
            return None
        return torch.as_tensor(np.flatnonzero(due), device=self.run.device)

    def density_due(self, step: int) -> bool:
        density = self.options.density
        return density is not None and step % (density.every or self.options.every) == 0

    def due(self, step: int) -> bool:
        return self.spectrum_due(step) or self.density_due(step)

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        opts = self.options
        inactive = ~state.active
        if self.spectrum_due(state.step):
            rows = self._rows_due(state.step)
            if self.tracker is not None:
                result = self.tracker(state.curvature, rows)
            else:
                result = state.curvature.spectrum(
                    opts.k, tol=opts.tol, max_iter=opts.max_iter, loss=opts.loss, mode=opts.mode
                )
            self.steps.append(state.step)
            self.records.append(self._record(state, result, inactive))
        if opts.stop_after_windows and state.step >= max((w[1] for w in opts.windows), default=0):
            state.run.request_stop("replay: past the last window")
        if opts.density is not None and self.density_due(state.step):
            density = state.curvature.density(opts.density.probes, opts.density.order, opts.loss)
            mask = _numpy(inactive)[:, None, None]
            self.density_steps.append(state.step)
            self.densities.append(
                (
                    np.where(mask, np.nan, _numpy(density.nodes)),
                    np.where(mask, np.nan, _numpy(density.weights)),
                )
            )

    def _record(
        self, state: plugin.StepState, result: plugin.LanczosResult, inactive: torch.Tensor
    ) -> tuple[np.ndarray, ...]:
        """One sample's per-member arrays; tells the adaptive cadence the stability factors.

        λmax's error bound is the residual ε = ‖Hy − θy‖ of its Ritz pair: for symmetric H an
        eigenvalue lies within ε of θ, and θ (a Rayleigh quotient) is never above λmax, so
        λmax ∈ [θ, θ + ε] unless a larger eigenvalue was missed altogether. The gradient's
        component along y (signed consistently from sample to sample) grows by |1 − ηλ| per
        step in a period-2 instability: an independent estimate of λ (dlf.analysis.crossing).
        Two dot products in torch, the rest in NumPy: per-op cost rules at the papers' size.
        """
        vector = result.vectors[:, 0]
        previous = vector if self._top is None else self._top
        turn = _numpy(torch.linalg.vecdot(vector, previous))
        along = _numpy(torch.linalg.vecdot(vector, state.grad))
        values, residuals = _numpy(result.values), _numpy(result.residuals)
        off = _numpy(inactive)
        top, bound = values[:, 0], residuals[:, 0]
        sampled = np.isfinite(top)  # members the cadence left out are NaN
        self._flipped ^= sampled & (turn < 0)
        self._top = (
            vector
            if sampled.all()
            else torch.where(
                torch.as_tensor(sampled, device=vector.device)[:, None], vector, previous
            )
        )
        factor = np.where(off, np.nan, _numpy(state.lr) * top / self.factor)
        if self.cadence is not None:  # a diverged member is observed as NaN: sparse
            self.cadence.observe(state.step, factor, sampled | off)
        return (
            np.where(off[:, None], np.nan, values),
            np.where(off[:, None], np.nan, residuals),
            _numpy(result.matvecs).astype(np.int64),
            np.where(off, np.nan, bound),
            (bound <= self.options.tol * np.abs(top)) & ~off,
            factor,
            np.where(off, np.nan, np.where(self._flipped, -along, along)),
        )

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        opts = self.options
        m, k = run.n_members, min(opts.k, run.model.n_params)
        step = self.var("step")
        coords = {step: (step, np.array(self.steps, dtype=np.int64), {"units": "step"})}
        out = {}
        for i, (name, dtype, attrs) in enumerate(self._series()):
            values = _stack([r[i] for r in self.records], (m, k) if i < 2 else (m,))
            dims = ("member", step, self.var("index"))[: values.ndim]
            out[self.var(name)] = xr.DataArray(
                values.astype(dtype), dims=dims, coords=coords, attrs=attrs
            )
        if opts.density is not None:
            out.update(self._density_arrays(m))
        return out

    def _series(self) -> list[tuple[str, type, dict[str, object]]]:
        """Name, type and attributes of each per-sample series, in the order of a record."""
        opts = self.options
        return [
            (
                "eigenvalues",
                float,
                {
                    "long_name": f"top Hessian eigenvalues of the {opts.loss} loss",
                    "mode": opts.mode,
                    "tol": opts.tol,
                },
            ),
            ("residuals", float, {"long_name": "Ritz residual ‖H y − λ y‖ of each eigenpair"}),
            ("matvecs", np.int64, {"long_name": "Hessian-vector products used (0: exact mode)"}),
            (
                "error_bound",
                float,
                {
                    "long_name": "λmax ∈ [λ, λ + bound]: the residual of its Ritz pair",
                    "method": "residual",
                },
            ),
            ("converged", bool, {"long_name": "λmax's residual ≤ tol·|λmax|"}),
            (
                "factor",
                float,
                {
                    "long_name": "stability factor η_t·λmax/c (1: the edge of stability)",
                    "c": self.factor,
                    "cadence": opts.cadence,
                    "band": list(opts.band),
                },
            ),
            (
                "grad_along_top",
                float,
                {"long_name": "gradient's component along λmax's eigenvector (sign kept)"},
            ),
        ]

    def _density_arrays(self, m: int) -> dict[str, xr.DataArray]:
        density = self.options.density
        assert density is not None
        order = min(density.order, self.run.model.n_params)
        shape = (m, density.probes, order)
        nodes = _stack([d[0] for d in self.densities], shape)
        weights = _stack([d[1] for d in self.densities], shape)
        step = self.var("density_step")
        coords = {step: (step, np.array(self.density_steps, dtype=np.int64), {"units": "step"})}
        dims = ("member", step, self.var("probe"), self.var("node"))
        note = "density ≈ mean over probes of Σ_node weight·δ(λ − node) (stochastic Lanczos)"
        return {
            self.var("density_nodes"): xr.DataArray(
                nodes, dims=dims, coords=coords, attrs={"long_name": "nodes", "note": note}
            ),
            self.var("density_weights"): xr.DataArray(
                weights, dims=dims, coords=coords, attrs={"long_name": "quadrature weights"}
            ),
        }


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array (on the CPU, same dtype)."""
    return tensor.detach().cpu().numpy()


def _stack(rows: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Per-step arrays of ``shape`` stacked on a new axis 1 (the step axis)."""
    if not rows:
        return np.zeros((shape[0], 0, *shape[1:]))
    return np.stack(rows, axis=1)
