"""Running a config again: a finished run is skipped, a trace of other settings is refused in
one line (exit 2, the trace untouched), --fresh replaces; sweeps follow the same rule; a run
that ends leaves no lock file behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from dlf.cli import main
from dlf.engine.lock import TraceLock
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError
from tests.conftest import tiny_config


def config_file(tmp_path, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "out", **sections)))
    return path


def test_a_finished_run_is_not_run_again(tmp_path, capsys):
    config = config_file(tmp_path)
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    assert main(["run", str(config)]) == 0
    written = open_trace(trace).attrs["written"], trace.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(config), "--set", "output.checkpoint_seconds=5"]) == 0  # not a setting
    assert (
        capsys.readouterr().out
        == f"already complete: {trace} holds this run (--fresh runs it again)\n"
    )
    assert (open_trace(trace).attrs["written"], trace.stat().st_mtime_ns) == written


def test_other_settings_are_refused_and_fresh_replaces(tmp_path, capsys):
    config = config_file(tmp_path)
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    assert main(["run", str(config)]) == 0
    before = trace.read_bytes()
    capsys.readouterr()
    assert main(["run", str(config), "--set", "train.steps=20"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"dlf-study: error: {trace}: holds a run with other settings (train.steps: 60 there, "
        "20 now); pass --fresh to replace it, or give this run another name or --out\n"
    )
    assert trace.read_bytes() == before
    assert main(["run", str(config), "--set", "train.steps=20", "--fresh"]) == 0
    assert open_trace(trace).attrs["steps_completed"] == 20


def test_an_unfinished_run_of_the_same_settings_runs_again(tmp_path):
    config = config_file(tmp_path)
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    assert main(["run", str(config)]) == 0
    ds = open_trace(trace)
    ds.attrs.update(status="interrupted", steps_completed=10)
    ds.to_netcdf(trace, engine="netcdf4")
    assert main(["run", str(config)]) == 0
    assert open_trace(trace).attrs["status"] == "complete"


def test_a_file_that_is_not_a_trace_is_never_overwritten(tmp_path, capsys):
    import xarray as xr

    config = config_file(tmp_path)
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    trace.parent.mkdir(parents=True)
    xr.Dataset({"x": ("i", [1.0])}).to_netcdf(trace, engine="netcdf4")
    assert main(["run", str(config)]) == 2
    assert "is not a dlf-study trace; pass --fresh to replace it" in capsys.readouterr().err
    assert "x" in open_trace(trace)


def test_a_sweep_refuses_a_point_of_other_settings_before_running_any(tmp_path, capsys):
    sweep = {"sweep": {"model.width": [4, 5]}}
    config = config_file(tmp_path, **sweep)
    assert main(["run", str(config)]) == 0
    first = tmp_path / "out" / "tiny" / "width-4" / "trace.nc"
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(config), "--set", "train.steps=20"]) == 2
    assert (
        "holds a run with other settings (train.steps: 60 there, 20 now)" in capsys.readouterr().err
    )
    assert first.stat().st_mtime_ns == stamp  # refused before the first point ran
    assert main(["run", str(config), "--set", "train.steps=20", "--fresh"]) == 0
    assert open_trace(first).attrs["steps_completed"] == 20


@pytest.mark.parametrize("section", [{"threshold_study": {}}, {"search": {}}])
def test_fresh_is_refused_for_studies(tmp_path, capsys, section):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "s", **section}))
    assert main(["run", str(config), "--fresh"]) == 2
    assert capsys.readouterr().err == (
        "dlf-study: error: --fresh: a study resumes its own runs; remove its folder to start "
        "afresh\n"
    )


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    config = config_file(tmp_path)
    assert main(["run", str(config)]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "tiny").iterdir()) == ["trace.nc"]


def test_a_lock_removed_by_its_ending_holder_is_not_shared(tmp_path, monkeypatch):
    """The race: a second run opens the lock file, its holder ends (removing it), then the
    second locks. It must lock the path's new file, not the orphan, or a third run could too."""
    path = tmp_path / "trace.nc"
    first = TraceLock(path).acquire()
    real_open = os.open

    def open_then_the_holder_ends(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        monkeypatch.setattr(os, "open", real_open)
        first.release()
        return fd

    monkeypatch.setattr(os, "open", open_then_the_holder_ends)
    with TraceLock(path) as second:
        assert second.file.exists()
        with pytest.raises(ConfigError, match="another run"):
            TraceLock(path).acquire()


def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    """``dlf-study show … | head``: the reader is gone before show writes."""
    config = config_file(tmp_path)
    assert main(["run", str(config)]) == 0
    code = "import sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"
    trace = tmp_path / "out" / "tiny" / "trace.nc"
    show = subprocess.Popen(
        [sys.executable, "-c", code, "show", str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    show.stdout.close()  # long before the child has imported dlf and printed
    err = show.stderr.read()
    assert (show.wait(), err) == (0, "")


def test_show_says_one_member_and_no_error_bar_for_one_seed(tmp_path, capsys):
    config = config_file(tmp_path, schedule={"amplitude": 5, "period": 20}, train={"seeds": 1})
    assert main(["run", str(config)]) == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path / "out" / "tiny" / "trace.nc")]) == 0
    out = capsys.readouterr().out
    assert "1 member, width 8" in out
    assert "(1 seed, no error bar)" in out and "± 0.000" not in out
