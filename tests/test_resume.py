"""An interrupted run continues from its last checkpoint when run again with the same settings:
the finished trace and θ equal an uninterrupted run's, bit for bit in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlf.config import RunConfig
from dlf.engine.recorder import Recorder
from dlf.engine.resume import checkpoint_path
from dlf.engine.run import execute
from dlf.engine.trace import open_trace
from dlf.hooks.manager import plugins_with
from dlf.hooks.specs import hookimpl
from tests.conftest import tiny_config

STEPS, STOP_AT = 600, 300
EVERY = 128  # a checkpoint after every 128 steps (patched in: deterministic, not timed)


@pytest.fixture(autouse=True)
def checkpoint_every_128_steps(monkeypatch):
    monkeypatch.setattr(Recorder, "checkpoint_due", lambda self: self.steps_completed % EVERY == 0)


class Interrupt:
    """A plugin that presses Ctrl-C at the evaluation of step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def dlf_evaluate(self, state) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt


def config(tmp_path, **train) -> RunConfig:
    raw = tiny_config(
        tmp_path,
        train={"steps": STEPS, "eval_every": 50, **train},
        output={"root": str(tmp_path), "progress": "never"},
    )
    return RunConfig.model_validate(raw)


def interrupted_then_continued(cfg: RunConfig, trace):
    plugins = plugins_with([Interrupt(STOP_AT)], cfg.plugins)  # the shared manager stays clean
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, trace_path=trace, plugins=plugins)
    assert open_trace(trace).attrs["status"] == "interrupted"
    assert checkpoint_path(trace).exists()
    return execute(cfg, trace_path=trace)


@pytest.mark.parametrize(
    "train",
    [
        {},
        {"momentum": 0.9, "lr": 0.2},
        {"optimizer": "sgd", "batch_size": 16, "momentum": 0.5, "lr": 0.3},
    ],
    ids=["gd", "heavy-ball", "minibatch-sgd"],
)
def test_a_continued_run_equals_an_uninterrupted_one(tmp_path, train):
    cfg = config(tmp_path, **train)
    whole = execute(cfg, trace_path=tmp_path / "whole.nc")
    resumed = interrupted_then_continued(cfg, tmp_path / "parts.nc")
    assert resumed.resumed_from == 256  # the last checkpoint before the interrupt at 300
    torch.testing.assert_close(resumed.theta, whole.theta, rtol=0, atol=0)
    a, b = open_trace(tmp_path / "whole.nc"), open_trace(tmp_path / "parts.nc")
    assert b.attrs["status"] == "complete" and b.attrs["resumed_from_step"] == 256
    for name in ("loss", "static_loss", "train_accuracy", "gamma", "val_accuracy", "val_loss"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    np.testing.assert_array_equal(a["eval_step"].values, b["eval_step"].values)
    assert not checkpoint_path(tmp_path / "parts.nc").exists()  # finished: nothing to continue


def test_a_diverged_member_stays_diverged_after_continuing(tmp_path):
    # at η = 1e6 a member's loss passes the limit within a few steps; the others train on
    cfg = config(tmp_path, lr=[1.0, 1e6], diverge_above=1e3)
    whole = open_trace(execute(cfg, trace_path=tmp_path / "whole.nc").path)
    resumed = open_trace(interrupted_then_continued(cfg, tmp_path / "parts.nc").path)
    assert (whole["diverged_step"].values >= 0).any()
    np.testing.assert_array_equal(whole["diverged_step"].values, resumed["diverged_step"].values)
    np.testing.assert_array_equal(whole["loss"].values, resumed["loss"].values)


def test_other_settings_or_fresh_start_from_step_zero(tmp_path):
    cfg = config(tmp_path)
    trace = tmp_path / "t.nc"
    plugins = plugins_with([Interrupt(STOP_AT)], cfg.plugins)  # the shared manager stays clean
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, trace_path=trace, plugins=plugins)
    assert execute(cfg, trace_path=trace, fresh=True).resumed_from == 0
    assert "resumed_from_step" not in open_trace(trace).attrs
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, trace_path=trace, plugins=plugins)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 550})})
    assert execute(other, trace_path=trace).resumed_from == 0


def test_runs_with_analyzers_start_again(tmp_path):
    cfg = config(tmp_path).model_copy(update={"analyzers": {"lanczos": {"every": 100}}})
    trace = tmp_path / "t.nc"
    plugins = plugins_with([Interrupt(STOP_AT)], cfg.plugins)  # the shared manager stays clean
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, trace_path=trace, plugins=plugins)
    assert not checkpoint_path(trace).exists()  # an analyzer's own state is not saved
    assert execute(cfg, trace_path=trace).resumed_from == 0


def test_a_run_killed_outright_continues_from_the_command_line(tmp_path):
    """kill -9 mid-run, then the same command: it continues and ends as one whole run would."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = tiny_config(
        tmp_path / "out",
        train={"steps": 10_000, "eval_every": 1000},
        output={"root": str(tmp_path / "out"), "progress": "never", "checkpoint_seconds": 0.05},
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = "import sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "run", str(config)]
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not checkpoint_path(trace).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    step = open_trace(trace).attrs["resumed_from_step"]
    assert done.stdout == f"complete: trace written to {trace} (continued from step {step})\n"
    assert 0 < step < 10_000
    whole = execute(RunConfig.model_validate(raw), trace_path=tmp_path / "whole.nc")
    np.testing.assert_array_equal(open_trace(trace)["loss"].values, whole.open()["loss"].values)
