"""The grad_norm plugin: found through its entry point, and its norms equal a direct computation."""

from __future__ import annotations

import numpy as np
import torch

import dlf
from dlf.hooks.manager import load_plugins
from dlf.numerics.data import spiral_points
from dlf.numerics.models import MLP
from dlf.numerics.schedules import triangle

CONFIG = {
    "name": "grad_norm_test",
    "data": {"name": "spiral", "points_per_class": 10},
    "model": {"width": 6},
    "loss": {"name": "dce"},
    "schedule": {"amplitude": 5, "period": 10, "static_last_period": False},
    "train": {"steps": 12, "seeds": [3, 4], "eval_every": 6},
    "analyzers": {"grad_norm": {"every": 4}},
    "output": {"progress": "never"},
}


def class_gradients(theta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """∇ (1/P) Σ_{j: y_j = c} Γ_c CE_j for each class c, written out by hand for one member."""
    x, y = (torch.as_tensor(a) for a in spiral_points(3, 10, 0.2, 2.0, seed=0))
    model = MLP(2, (6,), 3)

    def share(t: torch.Tensor, c: int) -> torch.Tensor:
        logp = torch.log_softmax(model.forward(t[None], x)[0], dim=-1)
        ce = -logp[torch.arange(len(y)), y]
        return (gamma[c] * ce * (y == c)).sum() / len(y)

    return torch.stack([torch.func.grad(share)(theta, c) for c in range(3)])


def run(tmp_path, steps: int) -> dlf.RunResult:
    raw = {**CONFIG, "output": {"root": str(tmp_path / str(steps)), "progress": "never"}}
    raw["train"] = {**CONFIG["train"], "steps": steps}
    return dlf.execute(dlf.RunConfig.model_validate(raw))


def test_entry_point_registers_the_analyzer():
    plugins = load_plugins()
    assert "grad_norm" in plugins.registries.analyzers
    assert plugins.source_of("grad_norm") == "dlf-grad-norm 0.1.0 (entry point)"


def test_norms_match_a_direct_computation(tmp_path):
    ds = run(tmp_path, 12).open()
    by_class = ds["grad_norm_by_class"]
    assert by_class.dims == ("member", "grad_norm_step", "class_index")
    assert list(ds["grad_norm_step"].values) == [0, 4, 8]
    # θ_0 is the initial draw; θ_4 is where a 4-step run of the same config ends.
    thetas = {0: MLP(2, (6,), 3).init([3, 4]), 4: run(tmp_path, 4).theta}
    amplitude, period = torch.tensor([5.0] * 2, dtype=torch.float64), torch.tensor([10.0] * 2)
    for step, theta in thetas.items():
        gamma = triangle(torch.tensor([step]), amplitude, period.double(), 3)[0]
        for m in range(2):
            grads = class_gradients(theta[m], gamma[m])
            recorded = ds.sel(grad_norm_step=step).isel(member=m)
            np.testing.assert_allclose(
                recorded["grad_norm_by_class"], grads.norm(dim=-1), rtol=1e-9
            )
            np.testing.assert_allclose(recorded["grad_norm_total"], grads.sum(0).norm(), rtol=1e-9)
