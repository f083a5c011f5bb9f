"""The ``lanczos`` analyzer: top-k Hessian eigenvalues of every member along training.

At each due step it asks the shared curvature helper for the top-k eigenpairs of the Hessian of
the loss being minimised (F at the current Γ, or the static loss), so other analyzers at that
step (landscape, bifurcation) reuse the same solve and the next solve is warm-started from it.
Optionally it also records the whole spectrum's density by stochastic Lanczos quadrature.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from dlf import plugin
from dlf.plugin import DEFAULT_MAX_ITER, DEFAULT_TOL, LambdaMaxTracker


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
        "every = 1 and mode = lanczos",
    )
    track_period: int = Field(50, ge=1, description="steps between the tracker's full solves")


class LanczosAnalyzer(plugin.Analyzer):
    """Records ``lanczos_eigenvalues``, ``lanczos_residuals`` and ``lanczos_matvecs``."""

    Options = LanczosOptions
    options: LanczosOptions

    def memory(self) -> dict[str, float]:
        """k Ritz vectors (and as many Lanczos vectors) of every member's parameters."""
        run = self.run
        size = torch.empty((), dtype=run.dtype).element_size()
        return {"k": 2.0 * self.options.k * run.n_members * run.model.n_params * size}

    def __init__(self, name: str, options: plugin.AnalyzerOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        self.steps: list[int] = []
        self.records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.density_steps: list[int] = []
        self.densities: list[tuple[torch.Tensor, torch.Tensor]] = []
        opts = self.options
        track = opts.track
        if track is None:
            track = opts.k == 1 and opts.every == 1 and opts.mode == "lanczos"
        if track and (opts.k != 1 or opts.mode != "lanczos"):
            raise ValueError("lanczos: track needs k = 1 and mode = lanczos")
        self.tracker = (
            LambdaMaxTracker(opts.tol, opts.max_iter, opts.loss, opts.track_period)
            if track
            else None
        )

    def density_due(self, step: int) -> bool:
        density = self.options.density
        return density is not None and step % (density.every or self.options.every) == 0

    def due(self, step: int) -> bool:
        return step % self.options.every == 0 or self.density_due(step)

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        opts = self.options
        inactive = ~state.active
        if state.step % opts.every == 0:
            if self.tracker is not None:
                result = self.tracker(state.curvature)
            else:
                result = state.curvature.spectrum(
                    opts.k, tol=opts.tol, max_iter=opts.max_iter, loss=opts.loss, mode=opts.mode
                )
            self.steps.append(state.step)
            self.records.append(
                (
                    result.values.masked_fill(inactive[:, None], float("nan")),
                    result.residuals.masked_fill(inactive[:, None], float("nan")),
                    result.matvecs,
                )
            )
        if opts.density is not None and self.density_due(state.step):
            density = state.curvature.density(opts.density.probes, opts.density.order, opts.loss)
            mask = inactive[:, None, None]
            self.density_steps.append(state.step)
            self.densities.append(
                (
                    density.nodes.masked_fill(mask, float("nan")),
                    density.weights.masked_fill(mask, float("nan")),
                )
            )

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        opts = self.options
        m = run.n_members
        k = min(opts.k, run.model.n_params)
        values, residuals, matvecs = (
            _stack([r[i] for r in self.records], (m, k) if i < 2 else (m,)) for i in range(3)
        )
        step = self.var("step")
        coords = {step: (step, np.array(self.steps, dtype=np.int64), {"units": "step"})}
        dims = ("member", step, "eig_index")
        out = {
            self.var("eigenvalues"): xr.DataArray(
                values,
                dims=dims,
                coords=coords,
                attrs={
                    "long_name": f"top Hessian eigenvalues of the {opts.loss} loss",
                    "mode": opts.mode,
                    "tol": opts.tol,
                },
            ),
            self.var("residuals"): xr.DataArray(
                residuals,
                dims=dims,
                coords=coords,
                attrs={"long_name": "Ritz residual ‖H y − λ y‖ of each eigenpair"},
            ),
            self.var("matvecs"): xr.DataArray(
                matvecs.astype(np.int64),
                dims=("member", step),
                coords=coords,
                attrs={"long_name": "Hessian-vector products used (0: exact mode)"},
            ),
        }
        if opts.density is not None:
            out.update(self._density_arrays(m))
        return out

    def _density_arrays(self, m: int) -> dict[str, xr.DataArray]:
        density = self.options.density
        assert density is not None
        order = min(density.order, self.run.model.n_params)
        shape = (m, density.probes, order)
        nodes = _stack([d[0] for d in self.densities], shape)
        weights = _stack([d[1] for d in self.densities], shape)
        step = self.var("density_step")
        coords = {step: (step, np.array(self.density_steps, dtype=np.int64), {"units": "step"})}
        dims = ("member", step, "probe", "node")
        note = "density ≈ mean over probes of Σ_node weight·δ(λ − node) (stochastic Lanczos)"
        return {
            self.var("density_nodes"): xr.DataArray(
                nodes, dims=dims, coords=coords, attrs={"long_name": "nodes", "note": note}
            ),
            self.var("density_weights"): xr.DataArray(
                weights, dims=dims, coords=coords, attrs={"long_name": "quadrature weights"}
            ),
        }


def _stack(rows: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """Per-step tensors of ``shape`` stacked on a new axis 1 (the step axis), as numpy."""
    if not rows:
        return np.zeros((shape[0], 0, *shape[1:]))
    return torch.stack(rows, dim=1).cpu().numpy()
