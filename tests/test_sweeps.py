"""Sweeps: the grid × variants plan, its one-line errors, and running and resuming the runs."""

from __future__ import annotations

import pytest
import yaml

from dlf.config import apply_overrides, load_raw
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError
from dlf.studies.sweeps import cli_sweep, is_sweep, plan
from tests.conftest import tiny_config


def sweep_file(tmp_path, **extra):
    raw = tiny_config(tmp_path / "out", name="sw", train={"steps": 20, "seeds": 1})
    raw.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plan_crosses_variants_with_the_grid(tmp_path):
    raw = tiny_config(tmp_path, name="sw")
    raw["sweep"] = {"model": {"width": [4, 8]}, "train": {"steps": [10]}}
    raw["variants"] = {"dce": {}, "mse": {"loss": {"name": "dmse1"}, "train": {"lr": 0.075}}}
    points = plan(raw)
    assert [p.label for p in points] == [
        "dce_width-4_steps-10",
        "dce_width-8_steps-10",
        "mse_width-4_steps-10",
        "mse_width-8_steps-10",
    ]
    last = points[-1].config
    assert (last.model.width, last.train.steps, last.loss.name, last.train.lr) == (
        8,
        10,
        "dmse1",
        [0.075],
    )
    assert last.name == "sw-mse_width-8_steps-10"
    assert last.schedule.amplitude == [1, 5]  # untouched sections come from the base config
    assert points[0].config.loss.name == "dce"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "a sweep file needs a 'sweep' or a 'variants' section"),
        ({"sweep": {"model": {"width": 8}}}, "sweep.model.width: must be a non-empty list"),
        ({"sweep": {"model": {"width": []}}}, "sweep.model.width: must be a non-empty list"),
        ({"variants": {"a b": {}}}, "variants.a b: name may use letters, digits"),
        (
            {"sweep": {"model": {"width": [4, 0]}}},
            "model.width: Input should be greater than or equal to 1 (got 0) (in sweep, "
            "point width-0)",
        ),
        (
            {"variants": {"x": {"model": {"widht": 3}}}},
            "model.widht: unknown key; allowed: activation, depth, device, dtype, ensemble, init, "
            "name, options, width "
            "(in variants.x, point x)",
        ),
    ],
)
def test_plan_errors_name_the_field(tmp_path, extra, message):
    raw = tiny_config(tmp_path) | extra
    with pytest.raises(ConfigError) as info:
        plan(raw)
    assert str(info.value).startswith(message)


def test_sweep_runs_each_point_and_resumes(tmp_path, capsys):
    path = sweep_file(tmp_path, sweep={"model": {"width": [3, 5]}})
    assert is_sweep(load_raw(path))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert not is_sweep(load_raw(plain))
    assert is_sweep(apply_overrides(load_raw(plain), ["variants.a.train.steps=5"]))
    assert cli_sweep(load_raw(path), None) == 0
    traces = [tmp_path / "out" / "sw" / f"width-{w}" / "trace.nc" for w in (3, 5)]
    assert [int(open_trace(t)["width"]) for t in traces] == [3, 5]
    assert open_trace(traces[0]).attrs["config"].count('"name":"sw-width-3"') == 1
    first = capsys.readouterr().out
    assert "[1/2] width-3: complete, trace written to" in first
    stamps = [t.stat().st_mtime_ns for t in traces]
    assert cli_sweep(load_raw(path), None) == 0
    assert "[2/2] width-5: already complete" in capsys.readouterr().out
    assert [t.stat().st_mtime_ns for t in traces] == stamps
    overrides = ["train.steps=10", "sweep.model.width=[5]"]
    assert cli_sweep(apply_overrides(load_raw(path), overrides), tmp_path / "alt") == 0
    rerun = open_trace(tmp_path / "alt" / "sw" / "width-5" / "trace.nc")
    assert rerun.attrs["steps_completed"] == 10
