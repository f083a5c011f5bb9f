"""The resnet plugin: found through its entry point, trained with the lanczos and bifurcation
analyzers, and a member equals the plugin's module trained by hand (plain PyTorch, heavy ball).

It imports only ``dlf`` and ``dlf.testing`` (the harness: the run's data, the plugins loaded)."""

from __future__ import annotations

import numpy as np
import torch

import dlf
from dlf.testing import load_plugins, run_context

STEPS, LR, BETA = 6, 0.1, 0.9
CONFIG = {
    "name": "resnet_test",
    "data": {"name": "digits", "val_fraction": 0.95},
    "model": {"name": "resnet", "options": {"channels": 4, "stages": 2}},
    "loss": {"name": "dce"},
    "schedule": {"amplitude": [1, 5], "period": 3},
    "train": {"steps": STEPS, "lr": LR, "momentum": BETA, "seeds": [3], "eval_every": 3},
    "analyzers": {"lanczos": {"every": 2, "k": 2}, "bifurcation": {}},
    "output": {"progress": "never"},
}


def test_registered_through_the_entry_point():
    plugins = load_plugins()
    assert "resnet" in plugins.registries.models
    assert plugins.registries.models.source("resnet") == "resnet"


def test_runs_with_lanczos_and_bifurcation_and_equals_a_plain_loop(tmp_path):
    from dlf_resnet import resnet

    raw = {**CONFIG, "output": {"root": str(tmp_path), "progress": "never"}}
    result = dlf.execute(dlf.RunConfig.model_validate(raw))
    ds = result.open()
    assert ds.attrs["status"] == "complete"
    assert ds["lanczos_eigenvalues"].shape == (2, STEPS // 2, 2)
    assert np.isfinite(ds["lanczos_eigenvalues"]).all()
    assert "bifurcation_ratio" in ds and "3.8/η" in ds["bifurcation_ratio"].attrs["long_name"]

    data = run_context(dlf.RunConfig.model_validate(raw)).data  # the digits the run trained on
    x = torch.as_tensor(data.x_train).view(-1, 1, 8, 8)
    y = torch.as_tensor(data.y_train)
    torch.manual_seed(3)
    net = resnet((1, 8, 8), 10, channels=4, stages=2).double()
    loss_fn = dlf.DynamicalLoss("ce", 10, amplitude=5, period=3, total_steps=STEPS)
    params = list(net.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for t in range(STEPS):
        grads = torch.autograd.grad(loss_fn(net(x), y, t), params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads, strict=True):
                p.sub_(LR * v.mul_(BETA).add_(g))
    expected = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(result.theta[1], expected, rtol=1e-10, atol=1e-10)
