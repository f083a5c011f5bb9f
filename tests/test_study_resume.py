"""Ctrl-C during a study, then the same command: the batch that was running continues from its
run's last checkpoint instead of step 0, the resume message counts what was kept and what runs
again, and the report says why each FAIL row failed (issue 22)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import yaml

from dlf.engine.resume import checkpoint_path
from dlf.engine.trace import open_trace
from dlf.studies.search.results import open_study
from tests.conftest import study_raw

PATIENCE = 600  # waits are for events; a loaded CI machine is slow


def test_an_interrupted_batch_continues_from_its_checkpoint(tmp_path):
    raw = study_raw(tmp_path / "out", name="st", trials=2, static_baseline=False)
    raw["train"] = {"steps": 20_000, "eval_every": 2000}
    raw["output"]["checkpoint_seconds"] = 0.05
    raw["search"].update(width={"low": 4, "high": 4, "per_octave": 1}, target=0.99)
    raw["search"].update(pruner={"name": "none"}, confirm_seeds=2, confirm_step=2, confirm_max=4)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = "import sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "run", str(config)]
    runs = tmp_path / "out" / "st" / "runs"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + PATIENCE
    while not list(runs.glob(".*.resume.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (checkpoint,) = runs.glob(".*.resume.pt")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130
    trace = checkpoint.with_name(checkpoint.name.removeprefix(".").removesuffix(".resume.pt"))
    assert open_trace(trace).attrs["status"] == "interrupted"

    done = subprocess.run(command, capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, done.stderr
    assert (
        "0 finished search trials and 0 confirmation rounds kept; 2 released by an " in done.stderr
    )
    finished = open_trace(trace)
    assert finished.attrs["status"] in ("complete", "stopped")
    assert finished.attrs["resumed_from_step"] > 0
    assert not checkpoint_path(trace).exists()
    study = open_study(tmp_path / "out" / "st")
    failed = study["state"].values == "FAIL"
    assert failed.sum() == 2
    assert set(study["fail_reason"].values[failed]) == {"released (interrupted)"}
    retried = study["retry_of"].values[study["retry_of"].values >= 0]
    assert sorted(retried) == sorted(study["number"].values[failed])
    report = (tmp_path / "out" / "st" / "report.md").read_text()
    assert "failed: released (interrupted); run again as trial" in report
