"""Fault tests of runs and studies killed, diverging or stored badly, through the command line
(docs/reliability.md): kill -9 at random moments leaves a readable prefix and a re-run works,
SIGTERM is Ctrl-C, a diverging member harms no other, a torn journal is survived, and a
database password is never shown or stored."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

from dlf.engine.trace import remove_stale_temp_files
from tests.conftest import study_raw
from tests.test_trace import steps_written

PASSWORD = "hunter2-s3cret"
#: How long a command may take before a test gives up: generous, since these tests wait for
#: events (a trace appearing, a process ending), not for fixed times, and a loaded 2-core CI
#: machine runs a seconds-long command for minutes.
PATIENCE = 600


def cli() -> list[str]:
    exe = shutil.which("dlf-study")
    return [exe] if exe else [sys.executable, "-m", "dlf.cli"]


def write(tmp_path: Path, raw: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def run_config(out: Path, **train: Any) -> dict[str, Any]:
    """A run of a few seconds that rewrites its trace every 50 ms (checkpoints all the time)."""
    return {
        "name": "k",
        "data": {"name": "spiral", "points_per_class": 20},
        "model": {"width": 8},
        "schedule": {"amplitude": [1, 5], "period": 20},
        "train": {"steps": 4000, "seeds": 2, "eval_every": 100, **train},
        "output": {"root": str(out), "progress": "never", "checkpoint_seconds": 0.05},
    }


def check_prefix(trace: Path) -> int:
    """The trace opens, and its steps are 0, 1, …, n-1 with finite losses; returns n."""
    with xr.open_dataset(trace, engine="netcdf4") as ds:
        steps = ds.step.values
        assert (steps == np.arange(len(steps))).all()
        assert ds.attrs["steps_completed"] == len(steps)
        assert np.isfinite(ds.loss.values).all()
        return len(steps)


def kill_9_and_rerun(tmp_path: Path, delays: list[float]) -> list[int | None]:
    """For each delay: start a run, kill -9 it that long after its trace first appears (a
    negative delay: that long after start, before any trace), check what it left, and run the
    same command again to the end. Returns the steps each killed run left (None: no trace)."""
    steps = 10_000
    config = write(tmp_path, run_config(tmp_path / "out", steps=steps))
    trace = tmp_path / "out" / "k" / "trace.nc"
    command = [*cli(), "run", str(config)]
    seen = []
    for delay in delays:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if delay < 0:
            time.sleep(-delay)
        else:
            deadline = time.monotonic() + PATIENCE
            while not trace.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert trace.exists(), "the run wrote no trace"
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(check_prefix(trace) if trace.exists() else None)
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=PATIENCE)
        assert rerun.returncode == 0, rerun.stderr
        assert check_prefix(trace) == steps
        assert not list(trace.parent.glob(".*.tmp"))  # the dead writer's temp file is gone
    return seen


def test_kill_9_at_random_moments_leaves_a_prefix_and_the_rerun_succeeds(tmp_path):
    rng = random.Random(16)  # during start-up, then at checkpoints every 50 ms in training
    delays = [-1.0, *(rng.uniform(0.0, 0.6) for _ in range(4))]
    seen = kill_9_and_rerun(tmp_path, delays)
    assert any(n is not None and n < 10_000 for n in seen), seen  # kills landed in training


@pytest.mark.slow
def test_kill_9_twenty_times(tmp_path):
    rng = random.Random(13)
    kill_9_and_rerun(tmp_path, [rng.uniform(0.0, 1.0) for _ in range(20)])


def test_sigterm_of_a_run_is_ctrl_c(tmp_path):
    config = write(tmp_path, run_config(tmp_path / "out", steps=200_000))
    trace = tmp_path / "out" / "k" / "trace.nc"
    proc = subprocess.Popen(
        [*cli(), "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + PATIENCE
    while steps_written(trace) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # until a checkpoint with finished steps (the first is before step 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130
    assert err.splitlines() == ["dlf-study: interrupted; finished steps are in the trace"]
    with xr.open_dataset(trace, engine="netcdf4") as ds:
        assert ds.attrs["status"] == "interrupted"
        assert 0 < ds.attrs["steps_completed"] < 200_000


def test_a_diverging_member_leaves_the_others_bit_identical(tmp_path):
    traces = {}
    for label, lrs in (("alone", [0.5]), ("with-blow-up", [0.5, 1e6])):
        raw = run_config(tmp_path / label, steps=200, lr=lrs, diverge_above=100.0)
        done = subprocess.run(
            [*cli(), "run", str(write(tmp_path, raw, f"{label}.yaml"))], capture_output=True
        )
        assert done.returncode == 0, done.stderr
        traces[label] = xr.load_dataset(tmp_path / label / "k" / "trace.nc", engine="netcdf4")
    alone, mixed = traces["alone"], traces["with-blow-up"]
    blown = mixed.eta.values == 1e6
    assert (mixed.diverged_step.values[blown] >= 0).all()  # the blow-up happened and is recorded
    assert np.isnan(mixed.val_accuracy.values[blown][:, -1]).all()
    kept = mixed.isel(member=np.flatnonzero(~blown))
    for name in ("loss", "static_loss", "train_accuracy", "gamma", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(kept[name].values, alone[name].values, err_msg=name)
    assert (kept.diverged_step.values == -1).all()
    shown = subprocess.run(
        [*cli(), "show", str(tmp_path / "with-blow-up" / "k" / "trace.nc")],
        capture_output=True,
        text=True,
    )
    blown_groups = [line for line in shown.stdout.splitlines() if "η=1e+06" in line]
    assert len(blown_groups) == 2, shown.stdout  # A = 1 and A = 5, two seeds each
    assert all("val acc n/a (2 of 2 diverged, excluded)" in line for line in blown_groups)


def test_a_torn_last_journal_record_is_survived_and_reported(tmp_path):
    raw = study_raw(tmp_path / "out", name="st")
    config = write(tmp_path, raw)
    first = subprocess.run([*cli(), "run", str(config)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    journal = tmp_path / "out" / "st" / "optuna.journal"
    with xr.open_dataset(tmp_path / "out" / "st" / "study.nc", engine="netcdf4") as ds:
        finished = int((ds.state.values == "COMPLETE").sum() + (ds.state.values == "PRUNED").sum())
    assert finished > 0
    with journal.open("ab") as file:  # a record cut short by a full disk
        file.write(b'{"op_code": 5, "worker_id": "dead-worker", "trial_id": 1, "sta')
    raw["search"]["trials"] = 8  # room for more, so the re-run appends to the journal
    again = subprocess.run(
        [*cli(), "run", str(write(tmp_path, raw))], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "torn record" in line]
    assert len(warnings) == 1 and str(journal) in warnings[0]
    assert f"{finished} finished search trials and " in again.stderr
    assert b"dead-worker" in (journal.parent / "optuna.journal.torn").read_bytes()
    for line in journal.read_bytes().splitlines():
        json.loads(line)  # every record left is whole


def test_a_database_password_is_never_printed(tmp_path):
    for url in (
        f"postgresql://dlf:{PASSWORD}@127.0.0.1:1/db",
        f"postgresql://dlf@127.0.0.1:1/db?password={PASSWORD}",
    ):
        raw = study_raw(tmp_path / "out", name="st", storage=url)
        done = subprocess.run(
            [*cli(), "run", str(write(tmp_path, raw))], capture_output=True, text=True
        )
        assert done.returncode == 2
        assert len(done.stderr.splitlines()) == 1 and "search.storage: cannot open" in done.stderr
        assert PASSWORD not in done.stderr and "***" in done.stderr


def test_the_storage_url_may_come_from_the_environment(tmp_path):
    raw = study_raw(tmp_path / "out", name="st")
    env = {**os.environ, "DLF_STORAGE_URL": f"postgresql://dlf:{PASSWORD}@127.0.0.1:1/db"}
    done = subprocess.run(
        [*cli(), "run", str(write(tmp_path, raw))], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    assert "cannot open postgresql://dlf:***@127.0.0.1:1/db" in done.stderr
    assert PASSWORD not in done.stderr


def test_a_stored_study_keeps_no_password(tmp_path):
    db = tmp_path / "trials.db"
    raw = study_raw(tmp_path / "out", name="st", storage=f"sqlite:///{db}?password={PASSWORD}")
    done = subprocess.run(
        [*cli(), "run", str(write(tmp_path, raw))], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert db.exists()
    folder = tmp_path / "out" / "st"
    with xr.open_dataset(folder / "study.nc", engine="netcdf4") as ds:
        stored = json.loads(ds.attrs["config"])["search"]["storage"]
    assert stored == f"sqlite:///{db}?password=***"
    for text in (done.stdout, done.stderr, (folder / "report.md").read_text()):
        assert PASSWORD not in text


def test_a_second_run_aimed_at_a_live_runs_trace_is_one_line_and_harms_nothing(tmp_path):
    config = write(tmp_path, run_config(tmp_path / "out", steps=200_000))
    trace = tmp_path / "out" / "k" / "trace.nc"
    first = subprocess.Popen([*cli(), "run", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + PATIENCE
        while steps_written(trace) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(
            [*cli(), "run", str(config)], capture_output=True, text=True, timeout=PATIENCE
        )
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"dlf-study: error: name: another run (pid {first.pid}) is writing {trace}; wait "
            "for it to end, or give this run another name or --out"
        ]
        assert first.poll() is None  # the first writes on, its checkpoints unharmed
        time.sleep(0.5)
        check_prefix(trace)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=PATIENCE)
    assert first.returncode == 130


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    path = tmp_path / "trace.nc"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = path.with_name(f".trace.nc.{live.pid}.0123abcd.tmp")
        stale = path.with_name(f".trace.nc.{dead.pid}.89abcdef.tmp")
        for tmp in (theirs, stale):
            tmp.write_bytes(b"half a trace")
        assert remove_stale_temp_files(path) == [stale]
        assert theirs.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()
