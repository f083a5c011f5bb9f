"""The second fault battery (issue 25, docs/reliability.md): bad inputs a new user tries, plugins
that break in ways NetCDF or the interpreter cannot survive, secrets in storage URLs, files whose
names or contents are untrusted. Everything goes through the ``dlf-study`` command line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

from tests.conftest import study_raw, tiny_config
from tests.test_faults import RUN_BASE, STUDY_BASE, Case, cli, config_file, files_under

SECRET = "hunter2-s3cret"


def dlf_study(*args: str, cwd: Path, pythonpath: Path | None = None, timeout: float = 120):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [*cli(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def dlf_study_here(*args: str, cwd: Path, monkeypatch, capsys, pythonpath: Path | None = None):
    """``dlf-study`` run in this process (seconds faster than a subprocess, same command
    line: ``dlf.cli.main``), with its exit code and what it printed."""
    from dlf.cli import main

    monkeypatch.chdir(cwd)
    if pythonpath is not None:
        monkeypatch.syspath_prepend(str(pythonpath))
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    finally:
        sys.modules.pop("bad", None)  # the plugin module the tests write, fresh every time
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def one_line_error(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one stderr line of a refused command (exit ``code``, no traceback)."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("dlf-study: error: "), done.stderr
    return lines[0]


# --- bad inputs: one line naming the field, exit 2, nothing written -------------------------


@dataclass(frozen=True)
class Bad:
    """A config spoiled by ``edits`` (dotted key → value) or given as ``text``; the field named."""

    edits: dict[str, Any] | None = None
    field: str | None = None
    base: Path = RUN_BASE
    text: str | None = None
    args: tuple[str, ...] = ()
    out: bool = True  # False: no --out, so output.root is the config's own
    secret: bool = False  # the line must not hold SECRET


URL = f"postgresql://dlf:{SECRET}@127.0.0.1:1/db"
BAD: dict[str, Bad] = {
    # numbers that only look like numbers
    "data-seed-negative": Bad({"data.seed": -1}, "data.seed"),
    "train-seed-2**70": Bad({"train.seeds": [2**70]}, "train.seeds"),
    "sampler-seed-negative": Bad({"search.sampler.seed": -1}, "search.sampler.seed", STUDY_BASE),
    "width-true": Bad({"model.width": True}, "model.width"),
    "steps-false": Bad({"train.steps": False}, "train.steps"),
    "lr-true": Bad({"train.lr": [True]}, "train.lr"),
    "search-target-true": Bad({"search.target": True}, "search.target", STUDY_BASE),
    # names and paths
    "name-ends-in-newline": Bad({"name": "run\n"}, "name"),
    "output-root-nul": Bad({"output.root": "a\x00b"}, "output.root", out=False),
    "duplicate-yaml-key": Bad(text="name: a\nname: b\ntrain: {steps: 5}\n", field="name"),
    "duplicate-nested-key": Bad(text="train: {steps: 5, steps: 6}\n", field="train.steps"),
    # a config is code, but only a model factory may come of model.name
    "model-builtins-print": Bad({"model": {"name": "builtins:print"}}, "model.name"),
    "model-not-callable": Bad({"model": {"name": "this:s"}}, "model.name"),
    "model-returns-int": Bad({"model": {"name": "builtins:max"}}, "model.name"),
    # secrets in a storage URL
    "storage-as-list": Bad({"search.storage": [URL]}, "search.storage", STUDY_BASE, secret=True),
    "storage-sslpassword": Bad(
        {"search.storage": f"postgresql://dlf@127.0.0.1:1/db?sslpassword={SECRET}"},
        "search.storage",
        STUDY_BASE,
        secret=True,
    ),
    "storage-at-in-password": Bad(
        {"search.storage": f"postgresql://dlf:T@{SECRET}@127.0.0.1:1/db"},
        "search.storage",
        STUDY_BASE,
        secret=True,
    ),
    # a study's run config, checked before the storage is touched
    "study-lanczos-k-0": Bad(
        {"analyzers": {"lanczos": {"k": 0}}}, "analyzers.lanczos.k", STUDY_BASE
    ),
    # sizes that scale memory, refused before they are allocated
    "points-per-class-1e9": Bad({"data.points_per_class": 10**9}, "data.points_per_class"),
    "classes-1e6": Bad({"data.classes": 10**6}, "data.classes"),
    "landscape-grid-1e6": Bad(
        {"analyzers": {"landscape": {"grid": 10**6, "steps": [5]}}}, "analyzers.landscape.grid"
    ),
    "lanczos-k-1e8": Bad({"analyzers": {"lanczos": {"k": 10**8}}}, "analyzers.lanczos.k"),
    # flags
    "workers-two": Bad(args=("--workers", "two"), field="--workers", base=STUDY_BASE),
}


def bad_config(case: Bad, folder: Path) -> Path:
    """Write the case's config into ``folder``, as the first battery writes its cases."""
    return config_file(Case(base=case.base, edits=case.edits, text=case.text), folder)


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case, monkeypatch, capsys):
    configs, cwd, out = tmp_path / "configs", tmp_path / "cwd", tmp_path / "out"
    configs.mkdir()
    cwd.mkdir()
    path = bad_config(case, configs)
    flags = ("--out", str(out)) if case.out else ()
    done = dlf_study_here(
        "run", str(path), *flags, *case.args, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys
    )
    line = one_line_error(done)
    if case.field is not None:
        assert f" {case.field}" in line, line
    if case.secret:
        assert SECRET not in line and SECRET[:4] not in line and "***" in line, line
    assert files_under(cwd) == [] and files_under(out) == []


# --- plugins: their failure is theirs; the core's finished steps are kept -----------------

CONTRIBUTION = """
import numpy as np
import dlf.plugin

@dlf.plugin.hookimpl
def dlf_trace_contribute(run):
    return {value}
"""
BAD_CONTRIBUTIONS = {
    "float16": "{'bad_x': (('member',), np.zeros(run.n_members, dtype=np.float16))}",
    "complex": "{'bad_x': (('member',), np.zeros(run.n_members, dtype=complex))}",
    "object": "{'bad_x': (('member',), np.array([object()] * run.n_members))}",
    "dict-attribute": "{'bad_x': (('member',), np.zeros(run.n_members), {'a': {'b': 1}})}",
    "slash-in-name": "{'bad_x/y': (('member',), np.zeros(run.n_members))}",
    "slash-in-dimension": "{'bad_x': (('bad/m',), np.zeros(3))}",
    "not-a-dict": "[1, 2, 3]",
}


def plugin_config(tmp_path: Path, plugin: str, source: str, **sections: Any) -> Path:
    (tmp_path / f"{plugin}.py").write_text(source)
    raw = tiny_config(tmp_path / "out", name="p", plugins=[plugin], **sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_core_trace_whole(trace: Path, status: str = "failed", steps: int = 60) -> None:
    with xr.open_dataset(trace, engine="netcdf4") as ds:
        assert ds.attrs["status"] == status and ds.attrs["steps_completed"] == steps
        assert ds.sizes["step"] == steps and np.isfinite(ds.loss.values).all()
        assert not [name for name in ds.variables if str(name).startswith("bad_")]


def run_failing_plugin(tmp_path: Path, source: str, monkeypatch, capsys) -> str:
    """``dlf-study run`` with the plugin module ``bad`` holding ``source``: its one-line error."""
    config = plugin_config(tmp_path, "bad", source)
    here = {"monkeypatch": monkeypatch, "capsys": capsys, "pythonpath": tmp_path}
    return one_line_error(dlf_study_here("run", str(config), cwd=tmp_path, **here), 1)


@pytest.mark.parametrize("value", BAD_CONTRIBUTIONS.values(), ids=BAD_CONTRIBUTIONS.keys())
def test_a_contribution_netcdf_cannot_store_is_refused_and_the_core_trace_kept(
    tmp_path, value, monkeypatch, capsys
):
    line = run_failing_plugin(tmp_path, CONTRIBUTION.format(value=value), monkeypatch, capsys)
    assert "plugin 'bad'" in line, line
    assert_core_trace_whole(tmp_path / "out" / "p" / "trace.nc")


EXITING_HOOK = """
import sys
import dlf.plugin

@dlf.plugin.hookimpl
def dlf_evaluate(state):
    if state.step == 20:
        {action}
"""


@pytest.mark.parametrize(
    "action", ["sys.exit(0)", "raise SystemExit(4)", "raise KeyboardInterrupt"]
)
def test_a_hook_that_exits_fails_its_plugin_and_keeps_the_steps_before(
    tmp_path, action, monkeypatch, capsys
):
    line = run_failing_plugin(tmp_path, EXITING_HOOK.format(action=action), monkeypatch, capsys)
    assert "plugin 'bad' failed at step 20" in line, line
    assert_core_trace_whole(tmp_path / "out" / "p" / "trace.nc", steps=20)


def entry_point_plugin(site: Path, source: str) -> None:
    """A distribution ``dlf-bad`` whose entry point in group ``dlf`` is module ``dlf_bad``."""
    site.mkdir(exist_ok=True)
    (site / "dlf_bad.py").write_text(source)
    info = site / "dlf_bad-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dlf-bad\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dlf]\nbad = dlf_bad\n")


BROKEN_AT_LOAD = {
    "exit-at-import": "import sys\nsys.exit(3)\n",
    "interrupt-at-import": "raise KeyboardInterrupt\n",
    "exit-in-register": (
        "import dlf.plugin\n\n@dlf.plugin.hookimpl\ndef dlf_register(registries):\n"
        "    raise SystemExit(4)\n"
    ),
}


@pytest.mark.parametrize("source", BROKEN_AT_LOAD.values(), ids=BROKEN_AT_LOAD.keys())
def test_an_installed_plugin_exiting_at_load_is_broken_not_fatal(tmp_path, source):
    entry_point_plugin(tmp_path / "site", source)
    listed = dlf_study("plugins", cwd=tmp_path, pythonpath=tmp_path / "site")
    assert listed.returncode == 0, listed.stderr
    assert "bad" in listed.stdout and "BROKEN" in listed.stdout
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "out", name="r", train={"steps": 5})))
    done = dlf_study("run", str(config), cwd=tmp_path, pythonpath=tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "dlf plugin 'bad'" in done.stderr and "interrupted" not in done.stderr


def test_a_config_plugin_exiting_at_import_is_one_line_naming_it(tmp_path):
    config = plugin_config(tmp_path, "bad", "import sys\nsys.exit(3)\n")
    line = one_line_error(dlf_study("run", str(config), cwd=tmp_path, pythonpath=tmp_path))
    assert "plugins.0" in line and "'bad'" in line and "SystemExit" in line
    assert not (tmp_path / "out").exists()


# --- secrets in files -------------------------------------------------------------------


def test_redaction_parses_every_secret_part_of_a_url():
    from dlf.config import redact_url

    cases = {
        f"postgresql://dlf:{SECRET}@host:5432/db": "postgresql://dlf:***@host:5432/db",
        f"postgresql://dlf:T@{SECRET}@host/db": "postgresql://dlf:***@host/db",
        f"postgresql://dlf:a/{SECRET}@host/db": "postgresql://dlf:***@host/db",
        f"postgresql://dlf@host/db?sslpassword={SECRET}&sslmode=require": (
            "postgresql://dlf@host/db?sslpassword=***&sslmode=require"
        ),
        f"mysql://h/db?user=u&password={SECRET}&api_token={SECRET}": (
            "mysql://h/db?user=u&password=***&api_token=***"
        ),
        f"postgresql://:{SECRET}@host/db": "postgresql://:***@host/db",
        "sqlite:///a/b.db": "sqlite:///a/b.db",
        "studies/x/optuna.journal": "studies/x/optuna.journal",
    }
    for url, shown in cases.items():
        assert redact_url(url) == shown, url


def test_a_secret_query_parameter_is_kept_out_of_report_and_study_file(tmp_path):
    db = tmp_path / "trials.db"
    url = f"sqlite:///{db}?sslpassword={SECRET}"
    raw = study_raw(tmp_path / "out", name="st", storage=url, trials=2)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = dlf_study("run", str(config), cwd=tmp_path)
    folder = tmp_path / "out" / "st"
    texts = [done.stdout, done.stderr]
    if (folder / "report.md").exists():
        texts.append((folder / "report.md").read_text())
    if (folder / "study.nc").exists():
        with xr.open_dataset(folder / "study.nc", engine="netcdf4") as ds:
            texts.append(json.dumps(dict(ds.attrs), default=str))
    assert done.returncode == 0 and len(texts) == 4, done.stderr
    for text in texts:
        assert SECRET not in text


# --- sweeps and studies ------------------------------------------------------------------


def test_sweep_points_whose_labels_collide_get_distinct_folders():
    from dlf.studies.sweeps import plan

    raw = tiny_config(Path("/nonexistent"), sweep={"train": {"lr": [0.1000001, 0.1000002]}})
    labels = [p.label for p in plan(raw)]
    assert len(set(labels)) == 2, labels


def test_a_sweep_with_one_value_twice_is_refused():
    from dlf.errors import ConfigError
    from dlf.studies.sweeps import plan

    raw = tiny_config(Path("/nonexistent"), sweep={"model": {"width": [4, 4]}})
    with pytest.raises(ConfigError, match=r"sweep\.model\.width"):
        plan(raw)


@pytest.mark.slow  # ~30 s: a whole study; the refusal itself is in the table above
def test_a_refused_study_can_be_fixed_and_rerun(tmp_path):
    """lanczos.k: 0 used to be refused only once the journal existed, and the fixed study was
    then refused as another setup's."""
    raw = study_raw(tmp_path / "out", name="st", trials=2, static_baseline=False)
    raw["analyzers"] = {"lanczos": {"k": 0, "every": 80}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert "analyzers.lanczos.k" in one_line_error(dlf_study("run", str(config), cwd=tmp_path))
    assert files_under(tmp_path / "out") == []
    raw["analyzers"]["lanczos"]["k"] = 1
    config.write_text(yaml.safe_dump(raw))
    done = dlf_study("run", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# --- files read by show and plot: untrusted -------------------------------------------------


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    from dlf.config import RunConfig
    from dlf.engine.run import execute

    folder = tmp_path_factory.mktemp("trace")
    config = RunConfig.model_validate(tiny_config(folder))
    return execute(config, trace_path=folder / "trace.nc").path


def spoiled(trace: Path, folder: Path, how: str) -> Path:
    with xr.open_dataset(trace, engine="netcdf4") as ds:
        ds = ds.load()
    if how == "no-steps":
        ds = ds.isel(step=slice(0, 0), eval_step=slice(0, 0))
        ds.attrs.update(steps_completed=0, status="running")
    elif how == "no-members":
        ds = ds.isel(member=slice(0, 0))
    elif how == "config-not-json":
        ds.attrs["config"] = "{not json"
    elif how == "name-climbs-out":
        config = json.loads(ds.attrs["config"])
        config["name"] = "../../../escaped"
        ds.attrs["config"] = json.dumps(config)
    elif how == "study-missing-variables":
        ds = xr.Dataset({"kind": ("trial", np.zeros(2)), "state": ("trial", np.zeros(2))})
        ds.attrs["target"] = 0.9
    elif how == "other-netcdf":
        ds = xr.Dataset({"x": ("i", np.arange(3.0))})
    path = folder / "trace.nc"
    ds.to_netcdf(path, engine="netcdf4")
    return path


SPOILED = ["no-steps", "no-members", "config-not-json", "study-missing-variables", "other-netcdf"]


@pytest.mark.parametrize("how", SPOILED)
@pytest.mark.parametrize("command", ["show", "plot"])
def test_an_odd_file_is_shown_or_refused_in_one_line(tmp_path, trace, how, command):
    path = spoiled(trace, tmp_path, how)
    figures = tmp_path / "figures"
    extra = ("--out", str(figures)) if command == "plot" else ()
    done = dlf_study(command, str(path), *extra, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        line = one_line_error(done)
        assert str(path) in line or "figure" in line, line
        assert files_under(figures) == []


def test_a_name_read_from_a_trace_cannot_climb_out_of_out(tmp_path, trace):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = spoiled(trace, folder, "name-climbs-out")
    figures = folder / "figures"
    done = dlf_study("plot", str(path), str(path), "--out", str(figures), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outside = [p for p in files_under(tmp_path) if p.suffix == ".png" and figures not in p.parents]
    assert outside == [] and files_under(figures)


@pytest.mark.parametrize("where", ["existing-file", "under-a-file", "read-only"])
def test_plot_into_an_unwritable_out_is_one_line(tmp_path, trace, where):
    out = tmp_path / "out"
    if where == "existing-file":
        out.write_text("keep\n")
    elif where == "under-a-file":
        (tmp_path / "f").write_text("keep\n")
        out = tmp_path / "f" / "out"
    else:
        out.mkdir()
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
    line = one_line_error(dlf_study("plot", str(trace), "--out", str(out), cwd=tmp_path))
    assert "--out" in line or str(out) in line, line


def test_a_negative_zoom_is_one_line(tmp_path, trace):
    for zoom in (["--zoom", "-50:-10"], ["--zoom=-50:-10"]):
        done = dlf_study("plot", str(trace), *zoom, "--out", str(tmp_path / "f"), cwd=tmp_path)
        assert "--zoom" in one_line_error(done)


def test_a_tilde_in_output_root_is_the_home_folder(tmp_path, monkeypatch):
    from dlf.config import RunConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    config = RunConfig.model_validate({"output": {"root": "~/runs"}})
    assert config.output.root == tmp_path / "runs"


# --- checkpoints and interrupts ---------------------------------------------------------------

ON_DISK = """
import xarray as xr
import dlf.plugin

seen = []

@dlf.plugin.hookimpl
def dlf_evaluate(state):
    if state.step == 50:
        with xr.open_dataset(state.run.config.output.root / "p" / "trace.nc") as ds:
            seen.append(int(ds.attrs["steps_completed"]))
"""


def test_checkpoints_are_taken_inside_a_block_of_steps(tmp_path, monkeypatch):
    """60 steps are one block of 256; with checkpoint_seconds tiny, the trace on disk at step
    50 must already hold finished steps (it held none when checkpoints waited for the block)."""
    from dlf.config import RunConfig
    from dlf.engine.run import execute

    (tmp_path / "ondisk.py").write_text(ON_DISK)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_config(tmp_path / "out", name="p", plugins=["ondisk"])
    raw["output"]["checkpoint_seconds"] = 1e-6
    execute(RunConfig.model_validate(raw))
    import ondisk

    assert ondisk.seen and ondisk.seen[0] >= 40, ondisk.seen


SECOND_CTRL_C = """
import os
import signal
import dlf.plugin

@dlf.plugin.hookimpl
def dlf_evaluate(state):
    if state.step == 20:
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C

@dlf.plugin.hookimpl
def dlf_trace_contribute(run):
    os.kill(os.getpid(), signal.SIGINT)  # a second one, while the last trace is written
    return {}
"""


def test_a_second_ctrl_c_waits_for_the_last_write(tmp_path):
    config = plugin_config(tmp_path, "twice", SECOND_CTRL_C)
    done = dlf_study("run", str(config), cwd=tmp_path, pythonpath=tmp_path)
    assert done.returncode == 130, done.stderr
    with xr.open_dataset(tmp_path / "out" / "p" / "trace.nc", engine="netcdf4") as ds:
        assert ds.attrs["status"] == "interrupted" and ds.attrs["steps_completed"] == 20


# --- a file that crashes the NetCDF library ------------------------------------------------


@pytest.mark.parametrize("failure", ["segfault", "endless"])
def test_a_read_that_crashes_or_never_ends_is_one_line(trace, monkeypatch, failure):
    """HDF5 itself can crash (SIGSEGV) or loop on a damaged file; the trial read in a child
    process turns either into the file's one-line error. The child's read is made to fail so
    here (no flip found on this machine's HDF5 crashes it: docs/reliability.md)."""
    import signal
    import time

    from dlf.engine import trace as trace_module
    from dlf.errors import InputError

    parent = os.getpid()
    real_open = xr.open_dataset

    def fragile_open(*args: Any, **kwargs: Any) -> xr.Dataset:
        if os.getpid() != parent:  # only the child's read fails, as HDF5 would
            if failure == "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(60)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(trace_module.xr, "open_dataset", fragile_open)
    monkeypatch.setattr(trace_module, "READ_SECONDS", 1.0)
    why = "SIGSEGV" if failure == "segfault" else "did not finish"
    with pytest.raises(InputError, match=f"{trace}: damaged: .*{why}"):
        trace_module.open_netcdf(trace)
    monkeypatch.undo()
    assert trace_module.open_netcdf(trace).sizes["step"] == 60  # an intact file reads as ever
