"""The ``grad_norm`` analyzer: how strongly each class pulls on the parameters during training.

The gradient of a loss that is a sum over samples splits into one part per class,
∇F = Σ_c g_c with g_c = ∇ (1/P) Σ_{j: y_j = c} Γ_c ℓ_j, and a dynamical loss tilts these parts in
turn. At every ``every``-th step this analyzer records ‖g_c‖ for every member and class, and ‖∇F‖.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from dlf import plugin


class GradNormOptions(plugin.AnalyzerOptions):
    """``analyzers: grad_norm:`` options (``every`` comes from :class:`plugin.AnalyzerOptions`)."""

    relative: bool = Field(False, description="divide each class's norm by the total's norm")


class GradNormAnalyzer(plugin.Analyzer[GradNormOptions]):
    """Records ``grad_norm_by_class`` (member, grad_norm_step, class_index) and
    ``grad_norm_total`` (member, grad_norm_step)."""

    def __init__(self, name: str, options: GradNormOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        self.steps: list[int] = []
        self.by_class: list[np.ndarray] = []
        self.total: list[np.ndarray] = []

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        objective = state.run.objective
        theta = state.theta.detach().requires_grad_(True)
        norms = []
        with torch.enable_grad():
            logits = objective.logits(theta)  # (member, sample, class): one forward for all
            for c in range(objective.n_classes):
                mine = objective.y == c
                share = mine.to(logits.dtype).mean()  # n_c / P: the loss's mean → (1/P) Σ_{j∈c}
                part = objective.loss(logits[:, mine], objective.y[mine], state.gamma) * share
                (g,) = torch.autograd.grad(part.sum(), theta, retain_graph=True)
                norms.append(g.norm(dim=-1))
        by_class = torch.stack(norms, dim=-1)  # (member, class)
        total = state.grad.norm(dim=-1)
        if self.options.relative:
            by_class = by_class / total[:, None]
        self.steps.append(state.step)
        self.by_class.append(by_class.detach().cpu().numpy())
        self.total.append(total.detach().cpu().numpy())

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        step = self.var("step")
        coords = {step: np.array(self.steps, dtype=np.int64)}
        m, c = run.n_members, run.objective.n_classes
        by_class = np.stack(self.by_class, axis=1) if self.steps else np.zeros((m, 0, c))
        total = np.stack(self.total, axis=1) if self.steps else np.zeros((m, 0))
        kind = "relative to ‖∇F‖" if self.options.relative else "absolute"
        return {
            self.var("by_class"): xr.DataArray(
                by_class,
                dims=("member", step, "class_index"),
                coords=coords,
                attrs={"long_name": f"norm of each class's gradient share ({kind})"},
            ),
            self.var("total"): xr.DataArray(
                total, dims=("member", step), coords=coords, attrs={"long_name": "‖∇F‖"}
            ),
        }


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.analyzers.add("grad_norm", GradNormAnalyzer)
