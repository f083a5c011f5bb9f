"""dlf.testing, the plugin authors' harness: an analyzer class runs without being installed, its
trace opens, and the dense-Hessian reference agrees with the lanczos analyzer's eigenvalues."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from dlf import plugin
from dlf.testing import dense_hessian, load_plugins, run_context, run_tiny


class Steps(plugin.Analyzer):
    """Records the steps it was called at and θ's first parameter there."""

    def __init__(self, name, options, run):
        super().__init__(name, options, run)
        self.seen: list[tuple[int, np.ndarray]] = []

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        self.seen.append((state.step, state.theta[:, 0].cpu().numpy()))

    @plugin.hookimpl
    def dlf_trace_contribute(self, run):
        steps = [s for s, _ in self.seen]
        first = np.stack([v for _, v in self.seen], axis=1)
        return {
            self.var("first"): xr.DataArray(
                first, dims=("member", self.var("step")), coords={self.var("step"): steps}
            )
        }


def test_an_unregistered_analyzer_runs_and_its_trace_opens(dlf_tester):
    ds = dlf_tester.run_analyzer("steps", Steps, {"every": 5}, train={"steps": 20})
    assert list(ds["steps_step"].values) == [0, 5, 10, 15]
    assert ds["steps_first"].dims == ("member", "steps_step")
    assert ds.attrs["status"] == "complete"
    assert "steps" not in load_plugins().registries.analyzers  # nothing installed


def test_dense_hessian_agrees_with_the_lanczos_analyzer(dlf_tester):
    """At step 0 the triangle schedule's Γ is 1 for every class, and θ is the initial draw."""
    config = dlf_tester.config(train={"steps": 1}, analyzers={"lanczos": {"k": 2, "mode": "exact"}})
    ds = run_tiny(config)
    run = run_context(config)
    theta = run.model.init([m.seed for m in run.members], config.model.init, run.dtype)
    gamma = torch.ones(run.n_members, run.objective.n_classes, dtype=run.dtype)
    top = torch.linalg.eigvalsh(dense_hessian(run.objective, theta, gamma)).flip(-1)[:, :2]
    recorded = ds["lanczos_eigenvalues"].isel(lanczos_step=0).values
    np.testing.assert_allclose(recorded, top.numpy(), rtol=1e-8)


def test_tiny_raw_is_a_fresh_copy_each_time(tmp_path):
    """Tests change the raw config in place (``del raw["model"]["width"]``): that must not leak
    into the next test's config."""
    from dlf.testing import tiny_raw

    first = tiny_raw(tmp_path)
    del first["model"]["width"]
    first["train"]["steps"] = 1
    second = tiny_raw(tmp_path / "other")
    assert second["model"]["width"] == 8 and second["train"]["steps"] == 60
    assert second["output"]["root"] == str(tmp_path / "other")
