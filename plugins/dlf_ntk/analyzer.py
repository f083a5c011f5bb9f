"""The ``ntk`` analyzer: top eigenvalues of the empirical NTK of every member along training.

Θ = Σ_c J_c J_cᵀ over the logits (as the 2021 paper's Fig. 4f), on the whole training set or a
fixed random subset of it drawn once per run. For small models the Gram matrix is formed in sample
space (P × P) or parameter space (C·n × C·n), whichever is smaller; beyond them (``auto``) Θ is
only applied to vectors, by Lanczos warm-started from the previous step's eigenvectors. ``method``
overrides the choice; the trace says which was used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from dlf import plugin
from dlf.plugin import choose_ntk_method


class NTKOptions(plugin.AnalyzerOptions):
    """How many eigenvalues, on which samples, with which Gram matrix, and how often."""

    k: int = Field(1, ge=1, description="number of top eigenvalues recorded")
    subset: int | None = Field(
        None, ge=1, description="random training samples used; null: the whole training set"
    )
    seed: int = Field(0, description="seed of the subset draw")
    method: Literal["auto", "sample", "parameter", "lanczos"] = Field(
        "auto",
        description="sample: P×P Gram; parameter: C·n×C·n Gram of [J_1…J_C]; lanczos: no Gram, "
        "warm-started Lanczos on Θ (tol 1e-6); auto: the smaller Gram for small models, else "
        "lanczos",
    )


class NTKAnalyzer(plugin.Analyzer[NTKOptions]):
    """Records ``ntk_eigenvalues`` (member, ntk_step, ntk_index) with attribute ``method``."""

    def __init__(self, name: str, options: NTKOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        x = run.objective.x
        size = self.options.subset
        if size is not None and size < x.shape[0]:
            gen = torch.Generator().manual_seed(self.options.seed)
            rows = torch.randperm(x.shape[0], generator=gen)[:size].sort().values
            x = x[rows.to(x.device)]
        self.x = x
        model = run.model
        self.method = choose_ntk_method(
            x.shape[0], model.n_out, model.n_params, self.options.method
        )
        self.k = min(self.options.k, x.shape[0], model.n_out * model.n_params)
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        result = state.curvature.ntk(self.k, self.x, self.method)
        self.steps.append(state.step)
        self.values.append(result.values.masked_fill(~state.active[:, None], float("nan")))

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        step = self.var("step")
        if self.values:
            values = torch.stack(self.values, dim=1).cpu().numpy()
        else:
            values = np.zeros((run.n_members, 0, self.k))
        array = xr.DataArray(
            values,
            dims=("member", step, self.var("index")),
            coords={step: (step, np.array(self.steps, dtype=np.int64), {"units": "step"})},
            attrs={
                "long_name": "top eigenvalues of the empirical NTK summed over logits",
                "method": self.method,
                "samples": int(self.x.shape[0]),
            },
        )
        return {self.var("eigenvalues"): array}
