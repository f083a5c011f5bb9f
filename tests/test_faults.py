"""Fault tests: bad input of every kind is answered with one line and exit code 2, and nothing
is written (docs/reliability.md). Everything goes through the ``dlf-study`` command line, as a
user would; every case must fail before training starts."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN_BASE = REPO / "configs" / "quick.yaml"
STUDY_BASE = REPO / "configs" / "min_width.yaml"


def cli() -> list[str]:
    """The installed ``dlf-study`` script, else the interpreter running the CLI module."""
    exe = shutil.which("dlf-study")
    return [exe] if exe else [sys.executable, "-m", "dlf.cli"]


def dlf_study(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [*cli(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def put(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``raw`` with the dotted key set to ``value`` (sections created as needed)."""
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


@dataclass(frozen=True)
class Case:
    """One bad input: the base config, how it is spoiled, extra flags, and the field named."""

    base: Path = RUN_BASE
    edits: dict[str, Any] | None = None  # dotted key → value applied to the base
    text: str | bytes | None = None  # the whole config file instead of an edited base
    args: tuple[str, ...] = ()
    field: str | None = None  # what the one line must name
    file_config: bool = True  # False: the config path is given as missing
    out_is_file: bool = False


HUGE = 10**9
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)

CASES: dict[str, Case] = {
    # unknown keys, at every level
    "unknown-top-level-key": Case(edits={"nmae": "x"}, field="nmae"),
    "unknown-model-key": Case(edits={"model.widht": 3}, field="model.widht"),
    "unknown-train-key": Case(edits={"train.stpes": 3}, field="train.stpes"),
    "unknown-schedule-key": Case(edits={"schedule.amplitud": 3}, field="schedule.amplitud"),
    "unknown-output-key": Case(edits={"output.rooot": "x"}, field="output.rooot"),
    "unknown-search-key": Case(STUDY_BASE, {"search.tagret": 0.9}, field="search.tagret"),
    "unknown-search-width-key": Case(STUDY_BASE, {"search.width.hi": 9}, field="search.width.hi"),
    "unknown-search-pruner-key": Case(
        STUDY_BASE, {"search.pruner.nme": "x"}, field="search.pruner.nme"
    ),
    # wrong types
    "width-is-a-word": Case(edits={"model.width": "wide"}, field="model.width"),
    "steps-is-a-list": Case(edits={"train.steps": [1, 2]}, field="train.steps"),
    "model-is-a-number": Case(edits={"model": 5}, field="model"),
    "search-target-is-a-word": Case(STUDY_BASE, {"search.target": "high"}, field="search.target"),
    # zero and negative sizes
    "width-zero": Case(edits={"model.width": 0}, field="model.width"),
    "steps-negative": Case(edits={"train.steps": -5}, field="train.steps"),
    "period-zero": Case(edits={"schedule.period": 0}, field="schedule.period"),
    "lr-negative": Case(edits={"train.lr": -1.0}, field="train.lr"),
    "eval-every-zero": Case(edits={"train.eval_every": 0}, field="train.eval_every"),
    "search-seeds-zero": Case(STUDY_BASE, {"search.seeds": 0}, field="search.seeds"),
    # inverted ranges
    "search-width-inverted": Case(
        STUDY_BASE, {"search.width": {"low": 64, "high": 8}}, field="search.width"
    ),
    "search-amplitude-inverted": Case(
        STUDY_BASE, {"search.amplitude": {"low": 20, "high": 5}}, field="search.amplitude"
    ),
    # NaN and infinity
    "amplitude-nan": Case(edits={"schedule.amplitude": float("nan")}, field="schedule.amplitude"),
    "amplitude-inf": Case(edits={"schedule.amplitude": float("inf")}, field="schedule.amplitude"),
    "period-nan": Case(edits={"schedule.period": float("nan")}, field="schedule.period"),
    "period-inf": Case(edits={"schedule.period": float("inf")}, field="schedule.period"),
    "lr-nan": Case(edits={"train.lr": float("nan")}, field="train.lr"),
    "lr-inf": Case(edits={"train.lr": float("inf")}, field="train.lr"),
    "search-amplitude-high-inf": Case(
        STUDY_BASE, {"search.amplitude.high": float("inf")}, field="search.amplitude.high"
    ),
    "search-period-low-nan": Case(
        STUDY_BASE, {"search.period.low": float("nan")}, field="search.period.low"
    ),
    # files that are not configs
    "unsafe-python-tag": Case(text="name: !!python/object/apply:os.system ['touch pwned']\n"),
    "empty-file": Case(text=""),
    "top-level-list": Case(text="- name: x\n- model: {width: 3}\n"),
    "binary-file": Case(text=bytes(range(256)) * 4),
    "missing-file": Case(file_config=False),
    "yaml-alias-bomb": Case(text=BOMB),
    # bad flags
    "set-unclosed-list": Case(args=("--set", "train.steps=["), field="train.steps"),
    "set-without-value": Case(args=("--set", "train.steps"), field="--set"),
    "workers-zero": Case(STUDY_BASE, args=("--workers", "0"), field="--workers"),
    "out-is-a-file": Case(out_is_file=True, field="output.root"),
    # names that are not one safe folder
    "name-300-characters": Case(edits={"name": "n" * 300}, field="name"),
    "name-dot-dot": Case(edits={"name": ".."}, field="name"),
    "name-dot": Case(edits={"name": "."}, field="name"),
    "name-with-slash": Case(edits={"name": "a/../../b"}, field="name"),
    "study-name-dot-dot": Case(STUDY_BASE, {"name": ".."}, field="name"),
    "seeds-empty-list": Case(edits={"train.seeds": []}, field="train.seeds"),
    # absurd sizes: refused on the estimate, before anything is allocated
    "width-1e9": Case(edits={"model.width": HUGE}, field="model.width"),
    "steps-1e12": Case(edits={"train.steps": 10**12}, field="train.steps"),
    "seeds-1e7": Case(edits={"train.seeds": 10**7}, field="train.seeds"),
    "depth-1e6": Case(edits={"model.depth": 10**6}, field="model.depth"),
    "search-ladder-to-1e9": Case(STUDY_BASE, {"search.width.high": HUGE}, field="search.width"),
    # sweeps: every point is checked before the first one is written
    "sweep-second-point-invalid": Case(
        edits={"sweep": {"model": {"width": [4, 0]}}}, field="model.width"
    ),
    "sweep-second-point-absurd": Case(
        edits={"sweep": {"model": {"width": [4, HUGE]}}}, field="model.width"
    ),
}


def config_file(case: Case, folder: Path) -> Path:
    """Write the case's config into ``folder``: its text, or its base with its edits."""
    path = folder / "config.yaml"
    if not case.file_config:
        return path
    if case.text is not None:
        mode = "wb" if isinstance(case.text, bytes) else "w"
        with path.open(mode) as file:
            file.write(case.text)
        return path
    raw = copy.deepcopy(yaml.safe_load(case.base.read_text()))
    raw["output"] = {"progress": "never"}
    for dotted, value in (case.edits or {}).items():
        put(raw, dotted, value)
    path.write_text(yaml.safe_dump(raw))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    configs, cwd, out = tmp_path / "configs", tmp_path / "cwd", tmp_path / "out"
    configs.mkdir()
    cwd.mkdir()
    path = config_file(case, configs)
    if case.out_is_file:
        out.write_text("keep me\n")
    done = dlf_study("run", str(path), "--out", str(out), *case.args, cwd=cwd)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dlf-study: error: ")
    assert "Traceback" not in done.stderr
    if case.field is not None:
        assert case.field in lines[0]
    assert files_under(cwd) == []  # nothing beside the default output root either
    if case.out_is_file:
        assert out.read_text() == "keep me\n"
    else:
        assert files_under(out) == []  # no trace, no lock, no optuna journal


# --- damaged files given to show and plot


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def header_flipped(data: bytes) -> bytes:
    """The HDF5 superblock after its signature, every bit inverted."""
    return data[:8] + bytes(b ^ 0xFF for b in data[8:40]) + data[40:]


def scattered_flips(data: bytes) -> bytes:
    """One bit inverted every 997 bytes past the superblock (metadata and compressed data)."""
    spoiled = bytearray(data)
    for i in range(1000, len(spoiled), 997):
        spoiled[i] ^= 1 << (i % 8)
    return bytes(spoiled)


DAMAGE = {
    "truncated": truncated,
    "header-flipped": header_flipped,
    "scattered-flips": scattered_flips,
    "text": lambda data: b"not a trace\n",
    "empty": lambda data: b"",
}


@pytest.fixture(scope="module")
def trace_bytes(tmp_path_factory) -> bytes:
    """A real trace of a tiny run, to damage."""
    from dlf.config import RunConfig
    from dlf.engine.run import execute
    from tests.conftest import tiny_config

    folder = tmp_path_factory.mktemp("trace")
    config = RunConfig.model_validate(tiny_config(folder))
    return execute(config, trace_path=folder / "trace.nc").path.read_bytes()


@pytest.mark.parametrize("command", ["show", "plot"])
@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_file_is_one_line_naming_it_exit_2(tmp_path, trace_bytes, damage, command):
    damaged = tmp_path / "trace.nc"
    damaged.write_bytes(damage(trace_bytes))
    extra = ("--out", str(tmp_path / "figures")) if command == "plot" else ()
    done = dlf_study(command, str(damaged), *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"dlf-study: error: {damaged}: ")
    assert not (tmp_path / "figures").exists()


def test_show_tells_files_by_content_and_refuses_other_netcdf(tmp_path, trace_bytes):
    renamed = tmp_path / "study.nc"  # a trace under a study's file name is still a trace
    renamed.write_bytes(trace_bytes)
    done = dlf_study("show", str(renamed), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"trace {renamed}"), done.stderr
    other = tmp_path / "other.nc"
    xr.Dataset({"x": ("i", np.arange(3.0))}).to_netcdf(other, engine="netcdf4")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for path, why in ((other, "neither a dlf-study trace"), (empty, "holds no")):
        done = dlf_study("show", str(path), cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"dlf-study: error: {path}: ") and why in done.stderr
