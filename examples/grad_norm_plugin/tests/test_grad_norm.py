"""The grad_norm plugin: found through its entry point, and its norms equal a direct computation.

It imports only ``dlf`` and ``dlf.testing`` (the harness: tiny runs, the run's objective)."""

from __future__ import annotations

import numpy as np
import torch

import dlf
from dlf.testing import load_plugins, run_context

SECTIONS = {
    "data": {"name": "spiral", "points_per_class": 10},
    "model": {"width": 6},
    "schedule": {"amplitude": 5, "period": 10, "static_last_period": False},
    "train": {"steps": 12, "seeds": [3, 4], "eval_every": 6},
    "analyzers": {"grad_norm": {"every": 4}},
}


def class_gradients(run: dlf.RunContext, theta: torch.Tensor, gamma: torch.Tensor):
    """∇ (1/P) Σ_{j: y_j = c} Γ_c CE_j for each class c, written out by hand for one member."""
    x, y, model = run.objective.x, run.objective.y, run.model

    def share(t: torch.Tensor, c: int) -> torch.Tensor:
        logp = torch.log_softmax(model.forward(t[None], x)[0], dim=-1)
        ce = -logp[torch.arange(len(y)), y]
        return (gamma[c] * ce * (y == c)).sum() / len(y)

    return torch.stack([torch.func.grad(share)(theta, c) for c in range(3)])


def test_entry_point_registers_the_analyzer():
    plugins = load_plugins()
    assert "grad_norm" in plugins.registries.analyzers
    assert plugins.source_of("grad_norm") == "dlf-grad-norm 0.1.0 (entry point)"


def test_norms_match_a_direct_computation(dlf_tester):
    ds = dlf_tester.run(**SECTIONS)
    by_class = ds["grad_norm_by_class"]
    assert by_class.dims == ("member", "grad_norm_step", "class_index")
    assert list(ds["grad_norm_step"].values) == [0, 4, 8]
    # θ_0 is the initial draw; θ_4 is where a 4-step run of the same config ends.
    config = dlf_tester.config(**{**SECTIONS, "train": {**SECTIONS["train"], "steps": 4}})
    run = run_context(config)
    thetas = {
        0: run.model.init([3, 4], config.model.init, run.dtype),
        4: dlf.execute(config).theta,
    }
    loss = dlf.DynamicalLoss("dce", 3, amplitude=5, period=10)  # Γ(t), never static
    for step, theta in thetas.items():
        gamma = loss.gamma(step)
        for m in range(2):
            grads = class_gradients(run, theta[m], gamma)
            recorded = ds.sel(grad_norm_step=step).isel(member=m)
            np.testing.assert_allclose(
                recorded["grad_norm_by_class"], grads.norm(dim=-1), rtol=1e-9
            )
            np.testing.assert_allclose(recorded["grad_norm_total"], grads.sum(0).norm(), rtol=1e-9)
