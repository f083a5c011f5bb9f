"""Traces: plain-xarray round trip, schema, checkpoints of killed runs, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from dlf.engine.run import execute
from dlf.engine.trace import open_trace
from tests.conftest import tiny_config


def test_trace_opens_with_plain_xarray_and_has_every_series(make_config, tmp_path):
    result = execute(make_config(), trace_path=tmp_path / "t.nc")
    with xr.open_dataset(result.path, engine="netcdf4") as ds:
        for name in (
            "loss",
            "static_loss",
            "train_accuracy",
            "lr",
            "gamma",
            "val_accuracy",
            "val_loss",
            "eval_train_accuracy",
            "diverged_step",
        ):
            assert name in ds, name
        assert ds.loss.dims == ("member", "step")
        assert ds.gamma.dims == ("member", "step", "class_index")
        assert ds.val_accuracy.dims == ("member", "eval_step")
        assert ds.sizes["step"] == 60 and ds.sizes["member"] == 4
        assert list(ds.eval_step.values) == [0, 10, 20, 30, 40, 50, 60]
        assert set(ds.coords) >= {"seed", "amplitude", "period", "eta", "width"}
        assert ds.loss.attrs["long_name"] and ds.loss.attrs["units"] == "1"
        config = json.loads(ds.attrs["config"])
        assert config["model"]["width"] == 8
        assert "torch" in json.loads(ds.attrs["versions"])
        assert ds.attrs["status"] == "complete" and ds.attrs["steps_completed"] == 60
        # static run (A = 1): F equals the static loss; dynamical: they differ
        static = ds.sel(member=ds.amplitude == 1)
        np.testing.assert_allclose(static.loss, static.static_loss, rtol=1e-12)
        dyn = ds.sel(member=ds.amplitude == 5)
        assert float(abs(dyn.loss - dyn.static_loss).max()) > 1e-3


def test_record_every_decimates(make_config, tmp_path):
    ds = open_trace(
        execute(make_config(train={"record_every": 7}), trace_path=tmp_path / "t.nc").path
    )
    assert list(ds.step.values) == list(range(0, 60, 7))


def steps_written(trace: Path) -> int:
    """``steps_completed`` of the trace's last checkpoint (0 while there is none)."""
    if not trace.exists():
        return 0
    with xr.open_dataset(trace, engine="netcdf4") as ds:
        return int(ds.attrs["steps_completed"])


def test_killed_run_leaves_valid_trace_of_finished_steps(tmp_path):
    raw = tiny_config(
        tmp_path,
        train={"steps": 400_000, "seeds": 1, "eval_every": 1000},
        output={"checkpoint_seconds": 0.5},
    )
    config_path = tmp_path / "long.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    trace = tmp_path / "tiny" / "trace.nc"
    proc = subprocess.Popen([sys.executable, "-m", "dlf.cli", "run", str(config_path)])
    try:
        # the first checkpoint comes before step 0: wait for one with finished steps
        deadline = time.monotonic() + 120
        while steps_written(trace) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert steps_written(trace) > 0, "no checkpoint with finished steps was written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ds = open_trace(trace)
    done = ds.attrs["steps_completed"]
    assert ds.attrs["status"] == "running" and 0 < done < 400_000
    assert ds.sizes["step"] == done
    assert np.isfinite(ds.loss.values).all()
    # a kill during a write may leave a temp file; the next run of the same trace removes it
    # (other settings: --fresh replaces the killed run's trace)
    rerun = ["run", str(config_path), "--set", "train.steps=5", "--fresh"]
    subprocess.run([sys.executable, "-m", "dlf.cli", *rerun], check=True)
    assert not list(tmp_path.glob("tiny/.*.tmp"))
    assert open_trace(trace).attrs["status"] == "complete"
