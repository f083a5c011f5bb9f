"""NTK eigenvalues against a dense Jacobian Gram, and both analyzers end to end through a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import dlf
from dlf.curvature.helper import Curvature
from dlf.curvature.ntk import choose_method, ntk_eigenvalues, ntk_lanczos
from dlf.numerics.schedules import triangle
from dlf.testing import dense_hessian
from tests.curvature_fixtures import tiny_gamma, tiny_objective


def dense_ntk_eigenvalues(model, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending) of Σ_c J_c J_cᵀ with J from jacrev of the whole batch's logits."""
    out = []
    for row in theta:
        jac = torch.func.jacrev(lambda r: model.forward(r[None], x)[0])(row)  # (P, C, n)
        kernel = sum(jac[:, c] @ jac[:, c].T for c in range(jac.shape[1]))
        out.append(torch.linalg.eigvalsh(kernel).flip(-1))
    return torch.stack(out)


@pytest.mark.parametrize("width", [6, 2])
def test_top_eigenvalues_equal_the_dense_jacobian_gram(width):
    objective = tiny_objective(width=width)
    model, x = objective.model, objective.x
    theta = model.init(range(3))
    exact = dense_ntk_eigenvalues(model, theta, x)[:, :3]
    expected_auto = "sample" if x.shape[0] <= 3 * model.n_params else "parameter"
    for method in ("sample", "parameter", "auto"):
        result = ntk_eigenvalues(model, theta, x, k=3, method=method)
        torch.testing.assert_close(result.values, exact, rtol=1e-10, atol=1e-12)
        assert result.method == (expected_auto if method == "auto" else method)


def test_choose_method_takes_the_smaller_gram_or_lanczos_beyond_small_models():
    assert choose_method(300, 3, 603) == "lanczos"  # the papers' network: no Gram
    assert choose_method(300, 3, 20) == "parameter"
    assert choose_method(36, 3, 39) == "sample"
    assert choose_method(300, 3, 20, "sample") == "sample"
    assert choose_method(36, 3, 39, "lanczos") == "lanczos"


def test_warm_started_lanczos_equals_the_dense_gram_along_training():
    """The helper's lanczos NTK at every step of a GD run against a dense Jacobian Gram; after
    the first (cold) solve each starts from the previous eigenvectors and needs fewer products."""
    objective = tiny_objective(width=20, points=20)
    theta, gamma = objective.model.init(range(3)), tiny_gamma(3)
    curvature = Curvature(objective)
    for step in range(4):
        result = curvature.at(step, theta, gamma).ntk(2, method="lanczos")
        assert result.method == "lanczos"
        exact = dense_ntk_eigenvalues(objective.model, theta, objective.x)[:, :2]
        torch.testing.assert_close(result.values, exact, rtol=1e-9, atol=0)
        previous = next(iter(curvature._previous_ntk_vectors.values()))
        warm = ntk_lanczos(objective.model, theta, objective.x, 2, previous)
        cold = ntk_lanczos(objective.model, theta, objective.x, 2, None)
        torch.testing.assert_close(warm.values, exact, rtol=1e-9, atol=0)
        assert bool((warm.matvecs < cold.matvecs).all()), (warm.matvecs, cold.matvecs)
        theta = theta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(theta, gamma).sum(), theta)
        theta = (theta - 0.5 * grad).detach()
    theta[1, 0] = float("nan")
    values = curvature.at(4, theta, gamma).ntk(1, method="lanczos").values
    assert bool(values[1].isnan().all()) and bool(values[[0, 2]].isfinite().all())


def test_curvature_helper_caches_ntk_and_masks_non_finite_rows():
    objective = tiny_objective()
    theta = objective.model.init(range(3))
    theta[2, 4] = float("nan")
    curvature = Curvature(objective).at(0, theta, tiny_gamma(3))
    values = curvature.ntk_eigenvalues(2)
    exact = dense_ntk_eigenvalues(objective.model, theta[:2], objective.x)[:, :2]
    torch.testing.assert_close(values[:2], exact, rtol=1e-10, atol=1e-12)
    assert bool(values[2].isnan().all())
    assert curvature.ntk(1).values.data_ptr() == curvature.ntk(2).values.data_ptr()


def run_config(tmp_path, steps: int, analyzers: dict) -> dlf.RunConfig:
    return dlf.RunConfig.model_validate(
        {
            "name": "curvature",
            "data": {"name": "spiral", "points_per_class": 12},
            "model": {"width": 6, "dtype": "float64"},
            "loss": {"name": "dce"},
            "schedule": {"amplitude": [1, 5], "period": 20, "static_last_period": False},
            "train": {"steps": steps, "seeds": 2, "eval_every": 10},
            "analyzers": analyzers,
            "output": {"root": str(tmp_path), "progress": "never"},
        }
    )


def test_run_records_the_contracted_variables_equal_to_dense_recomputation(tmp_path):
    analyzers = {"lanczos": {"every": 5, "tol": 1e-10}, "ntk": {"every": 10, "k": 2}}
    traced = dlf.execute(run_config(tmp_path, 41, analyzers), trace_path=tmp_path / "a.nc")
    plain = dlf.execute(run_config(tmp_path, 41, {}), trace_path=tmp_path / "b.nc")
    torch.testing.assert_close(traced.theta, plain.theta, rtol=0, atol=0)  # analyzers only read

    ds = xr.open_dataset(traced.path, engine="netcdf4")
    assert ds.lanczos_eigenvalues.dims == ("member", "lanczos_step", "lanczos_index")
    assert ds.lanczos_residuals.dims == ("member", "lanczos_step", "lanczos_index")
    assert ds.lanczos_matvecs.dims == ("member", "lanczos_step")
    assert ds.ntk_eigenvalues.dims == ("member", "ntk_step", "ntk_index")
    assert ds.ntk_eigenvalues.attrs["method"] == "sample"
    np.testing.assert_array_equal(ds.lanczos_step.values, np.arange(0, 41, 5))
    np.testing.assert_array_equal(ds.ntk_step.values, np.arange(0, 41, 10))
    assert ds.lanczos_eigenvalues.shape == (4, 9, 3)
    assert (ds.lanczos_matvecs.values > 0).all()

    # θ_40 is the end of a 40-step run; Γ(40) is the schedule's value there.
    theta40 = dlf.execute(run_config(tmp_path, 40, {}), trace_path=tmp_path / "c.nc").theta
    objective = tiny_objective(width=6, points=12)
    amplitude = torch.tensor(ds.amplitude.values, dtype=torch.float64)
    period = torch.tensor(ds.period.values, dtype=torch.float64)
    gamma40 = triangle(torch.tensor([40]), amplitude, period, 3)[0]
    hessian = dense_hessian(objective, theta40, gamma40)
    exact = torch.linalg.eigvalsh(hessian).flip(-1)[:, :3].numpy()
    recorded = ds.lanczos_eigenvalues.sel(lanczos_step=40).values
    np.testing.assert_allclose(recorded, exact, rtol=1e-8)
    ntk_exact = dense_ntk_eigenvalues(objective.model, theta40, objective.x)[:, :2].numpy()
    np.testing.assert_allclose(ds.ntk_eigenvalues.sel(ntk_step=40).values, ntk_exact, rtol=1e-10)
    ds.close()


def test_density_subset_and_static_options_through_a_run(tmp_path):
    analyzers = {
        "lanczos": {
            "every": 10,
            "k": 2,
            "loss": "static",
            "mode": "exact",
            "density": {"probes": 2, "order": 8, "every": 20},
        },
        "ntk": {"every": 20, "subset": 10, "method": "parameter"},
    }
    ds = dlf.open_trace(dlf.execute(run_config(tmp_path, 21, analyzers)).path)
    assert ds.lanczos_density_nodes.dims == (
        "member",
        "lanczos_density_step",
        "lanczos_probe",
        "lanczos_node",
    )
    assert ds.lanczos_density_nodes.shape == (4, 2, 2, 8)
    np.testing.assert_allclose(ds.lanczos_density_weights.sum("lanczos_node"), 1.0, rtol=1e-10)
    # The density's extreme nodes lie inside the spectrum, the top eigenvalue bounds them.
    top = ds.lanczos_eigenvalues.sel(lanczos_step=[0, 20]).isel(lanczos_index=0)
    assert (
        ds.lanczos_density_nodes.max(["lanczos_probe", "lanczos_node"]).values <= top.values + 1e-10
    ).all()
    assert (ds.lanczos_matvecs.values == 0).all()  # exact mode
    assert ds.ntk_eigenvalues.attrs["method"] == "parameter"
    assert ds.ntk_eigenvalues.attrs["samples"] == 10


def test_bad_option_is_a_config_error_naming_the_field(tmp_path):
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.lanczos\.mode"):
        dlf.execute(run_config(tmp_path, 5, {"lanczos": {"mode": "fast"}}))
    with pytest.raises(dlf.ConfigError, match=r"analyzers\.ntk"):
        dlf.execute(run_config(tmp_path, 5, {"ntk": {"subset": 0}}))
