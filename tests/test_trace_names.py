"""The trace naming rule for dimensions: a plugin's dimensions carry its prefix (the core's are
shared), the built-in analyzers follow it, and traces written with the former bare names open
under the current ones."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr

import dlf
from dlf.engine.former_names import FORMER_DIMS
from dlf.engine.run import CORE_DIMS, execute
from dlf.engine.trace import open_trace
from dlf.errors import PluginError

BARE_DIM = """
import numpy as np
import xarray as xr
import dlf.plugin

@dlf.plugin.hookimpl
def dlf_trace_contribute(run):
    return {"bare_x": xr.DataArray(np.zeros((run.n_members, 3)), dims=("member", "k"))}
"""


def test_a_dimension_without_the_plugins_prefix_is_refused(tmp_path, make_config):
    (tmp_path / "bare.py").write_text(BARE_DIM)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(PluginError, match=r"plugin 'bare' .*dimension 'k' of 'bare_x'"):
            execute(make_config(plugins=["bare"]), trace_path=tmp_path / "t.nc")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("bare", None)
    ds = open_trace(tmp_path / "t.nc")  # the finished steps are kept
    assert ds.attrs["status"] == "failed" and "bare_x" not in ds


def test_the_core_dimensions_are_those_of_the_core_trace(tmp_path, make_config):
    ds = open_trace(execute(make_config(train={"steps": 4})).path)
    assert set(ds.dims) == set(CORE_DIMS)


@pytest.fixture(scope="module")
def new_trace(tmp_path_factory):
    """A trace with the lanczos (density too) and landscape analyzers, written now."""
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("names")
    analyzers = {
        "lanczos": {"every": 5, "k": 2, "density": {"probes": 2, "order": 4}},
        "landscape": {"steps": [10], "grid": 3, "future": 2},
    }
    raw = tiny_config(root, train={"steps": 20}, analyzers=analyzers)
    return execute(dlf.RunConfig.model_validate(raw)).path


def test_built_in_analyzers_prefix_their_dimensions(new_trace):
    ds = open_trace(new_trace)
    for name, var in ds.data_vars.items():
        for dim in var.dims:
            plugin = str(name).split("_", 1)[0]
            assert dim in CORE_DIMS or str(dim).startswith(f"{plugin}_"), (name, dim)
    assert ds.landscape_trajectory.dims == ("landscape_slice", "landscape_k", "landscape_coord")
    assert ds.lanczos_eigenvalues.dims == ("member", "lanczos_step", "lanczos_index")


def test_a_trace_with_the_former_names_opens_under_the_current_ones(new_trace, tmp_path):
    """The former names written back (as an older version wrote them) and the file opened."""
    current = open_trace(new_trace)
    former = {new: old for table in FORMER_DIMS.values() for old, new in table.items()}
    old_path = tmp_path / "old.nc"
    current.rename({n: o for n, o in former.items() if n in current.dims}).to_netcdf(
        old_path, engine="netcdf4"
    )
    with xr.open_dataset(old_path, engine="netcdf4") as raw:  # the file has the old names
        assert {"slice", "a", "b", "k", "coord", "direction", "eig_index", "probe"} <= set(raw.dims)
    reopened = open_trace(old_path)
    xr.testing.assert_identical(reopened, current)
    np.testing.assert_array_equal(reopened.landscape_a, current.landscape_a)
