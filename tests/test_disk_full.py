"""A full disk under a run or a study (docs/reliability.md): one line saying "disk full", exit
code 2, and the previous trace, ``study.nc`` and journal intact, so the same command succeeds
once there is room. The default tests simulate ENOSPC where the files are written (portable);
one test fills a real tmpfs where this machine lets it mount one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dlf.cli import main
from dlf.engine import lock, trace
from dlf.studies.search import storage
from dlf.studies.search.liveness import RETRY_OF
from tests.conftest import study_raw, tiny_config


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_config(folder: Path, raw: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error_line(err: str) -> str:
    """The command's error line, checking it is its only one and no traceback came."""
    errors = [line for line in err.splitlines() if line.startswith("dlf-study: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_run_on_a_full_disk_says_so_and_keeps_the_previous_trace(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, tiny_config(tmp_path / "out"))
    assert main(["run", str(config)]) == 0
    path = tmp_path / "out" / "tiny" / "trace.nc"
    before = path.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(trace, "_fsync", no_space)  # the temp file's flush finds no room
    assert main(["run", str(config), "--set", "train.steps=80", "--fresh"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {path}: disk full" in line
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))


def test_a_full_disk_when_taking_the_trace_lock_is_one_line(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, tiny_config(tmp_path / "out"))
    monkeypatch.setattr(lock.os, "pwrite", no_space)  # the lock file's PID finds no room
    assert main(["run", str(config)]) == 2
    assert "disk full" in one_error_line(capsys.readouterr().err)


def test_a_full_disk_under_the_journal_leaves_whole_records_and_a_resumable_study(
    tmp_path, monkeypatch, capsys
):
    raw = study_raw(tmp_path / "out", name="st")
    config = write_config(tmp_path, raw)
    journal = tmp_path / "out" / "st" / "optuna.journal"
    appends = {"n": 0}
    original = storage.JournalFile._append

    def fills_up(self: storage.JournalFile, data: bytes) -> None:
        """The 25th append writes half its record, then the disk is full."""
        appends["n"] += 1
        if appends["n"] < 25:
            return original(self, data)
        with open(self._file_path, "ab") as file:
            file.write(data[: len(data) // 2])
        no_space()

    monkeypatch.setattr(storage.JournalFile, "_append", fills_up)
    assert main(["run", str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {journal}: disk full" in line
    for record in journal.read_bytes().splitlines(keepends=True):
        assert record.endswith(b"\n")
        json.loads(record)  # the torn append was taken back
    monkeypatch.undo()
    assert main(["run", str(config)]) == 0  # room again: the study resumes and finishes
    assert "torn record" not in capsys.readouterr().err
    assert (journal.parent / "study.nc").exists()


def test_a_full_disk_under_a_study_trace_releases_its_trials_for_a_retry(
    tmp_path, monkeypatch, capsys
):
    import optuna

    raw = study_raw(tmp_path / "out", name="st")
    config = write_config(tmp_path, raw)
    monkeypatch.setattr(trace, "_fsync", no_space)
    assert main(["run", str(config)]) == 2
    assert "disk full" in one_error_line(capsys.readouterr().err)
    journal = tmp_path / "out" / "st" / "optuna.journal"
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = [
        t
        for s in optuna.get_all_study_summaries(store)
        for t in optuna.load_study(study_name=s.study_name, storage=store).trials
    ]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and {t.system_attrs["dlf:failed"] for t in failed} == {"released (disk full)"}
    retries = [t.user_attrs.get(RETRY_OF) for t in trials if t.state.name == "WAITING"]
    assert sorted(retries) == sorted(t.number for t in failed)  # each is retried next time
    monkeypatch.undo()
    assert main(["run", str(config)]) == 0


def mount_tmpfs(folder: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` at ``folder``, or skip (not root, or no mount allowed)."""
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_real_full_tmpfs_as_out(tmp_path, capsys):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "400k")
    try:
        config = write_config(tmp_path, tiny_config(disk))
        assert main(["run", str(config)]) == 0
        path = disk / "tiny" / "trace.nc"
        before = path.read_bytes()
        filler = disk / "filler"
        with filler.open("wb", buffering=0) as file:  # every byte left, taken
            try:
                while True:
                    file.write(b"\0" * 4096)
            except OSError:
                pass
        capsys.readouterr()
        assert main(["run", str(config), "--set", "train.steps=80", "--fresh"]) == 2
        line = one_error_line(capsys.readouterr().err)  # the lock file or the trace: no room
        assert (
            line.startswith(f"dlf-study: error: cannot write {path.parent}/")
            and "disk full" in line
        )
        assert path.read_bytes() == before
        filler.unlink()
        assert main(["run", str(config), "--set", "train.steps=80", "--fresh"]) == 0
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_workers_stopped_by_a_full_disk_make_the_command_exit_2():
    from types import SimpleNamespace

    from dlf.studies.search.processes import WorkersFailed

    def workers(*codes: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=f"dlf-worker-{i}", exitcode=c) for i, c in enumerate(codes)]

    assert WorkersFailed(workers(2, 2)).exit_code == 2  # each said "disk full" on its line
    assert WorkersFailed(workers(2, 1)).exit_code == 1
    assert WorkersFailed(workers(-9)).exit_code == 1  # killed: no code of its own
