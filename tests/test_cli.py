"""The command line end to end: run, show, plugins, and one-line errors with exit code 2."""

import shutil
import subprocess
import sys

import pytest
import yaml

from dlf.cli import main
from dlf.engine.trace import open_trace
from tests.conftest import tiny_config


def write_config(tmp_path, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "out", **sections)))
    return path


def test_run_then_show_end_to_end(tmp_path):
    config = write_config(tmp_path)
    exe = shutil.which("dlf-study") or sys.executable
    args = [exe] if exe.endswith("dlf-study") else [exe, "-m", "dlf.cli"]
    done = subprocess.run(
        [
            *args,
            "run",
            str(config),
            "--set",
            "train.steps=30",
            "--set",
            "name=cli",
            "--out",
            str(tmp_path / "elsewhere"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    trace = tmp_path / "elsewhere" / "cli" / "trace.nc"
    assert str(trace) in done.stdout
    assert open_trace(trace).attrs["steps_completed"] == 30
    assert done.stderr == ""  # no progress bar when not on a terminal
    shown = subprocess.run([*args, "show", str(trace)], capture_output=True, text=True, check=True)
    assert "status complete, 30/30 steps, 4 members" in shown.stdout
    assert "A=5 T=20" in shown.stdout


@pytest.mark.parametrize(
    ("sections", "overrides", "expected"),
    [
        (
            {"model": {"widht": 3}},
            [],
            "model.widht: unknown key; allowed: activation, depth, device",
        ),
        ({}, ["schedule.amplitude=0.5"], "schedule.amplitude: every amplitude must be >= 1"),
        ({}, ["train.steps=-1"], "train.steps: Input should be greater than or equal to 1"),
        ({}, ["loss.name=hinge"], "loss.name: unknown loss 'hinge'; allowed: ce, dce, dmse1"),
        ({}, ["data.noize=1"], "data.noize: unknown key; allowed: classes, draw, noise"),
        ({}, ["analyzers.nope={}"], "analyzers.nope: unknown analyzer 'nope'; allowed:"),
        ({}, ["model.device=gpu"], "model.device: must be cpu, cuda or cuda:N"),
        ({}, ["train.optimizer=sgd"], "train: optimizer sgd needs batch_size"),
        ({}, ["oops"], "--set: expected key=value"),
    ],
)
def test_bad_config_is_one_line_exit_2_nothing_written(
    tmp_path, capsys, sections, overrides, expected
):
    config = write_config(tmp_path, **sections)
    code = main(["run", str(config), *[a for o in overrides for a in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dlf-study: error: ")
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_missing_and_malformed_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "cannot read config" in err[0] and "not valid YAML" in err[1]


def test_plugins_lists_core_registries(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "dlf.hooks.builtins" in out and "dce" in out and "spiral" in out and "triangle" in out


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["run", str(config), "--set", "output.progress=always"]) == 0
    assert "step/s" in capsys.readouterr().err
    assert main(["run", str(config), "--set", "output.progress=auto"]) == 0
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal


def test_workers_only_for_studies(tmp_path, capsys):
    assert main(["run", str(write_config(tmp_path)), "--workers", "2"]) == 2
    assert "--workers: only a study" in capsys.readouterr().err


def test_run_dispatches_a_sweep_and_plot_draws_it(tmp_path, capsys):
    config = write_config(tmp_path, sweep={"model": {"width": [4, 6]}}, name="sw")
    assert main(["run", str(config), "--set", "train.steps=20"]) == 0
    traces = sorted((tmp_path / "out" / "sw").glob("*/trace.nc"))
    assert [int(open_trace(t).width) for t in traces] == [4, 6]
    capsys.readouterr()
    out = tmp_path / "figs"
    assert main(["plot", str(tmp_path / "out" / "sw"), "--figure", "width", "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["width.png"]
    assert main(["plot", str(traces[0]), "--figure", "nope"]) == 2
