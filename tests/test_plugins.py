"""Plugins: one installed through an entry point in a temporary distribution, and failures."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import yaml

from dlf.engine.run import execute
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError, PluginError
from dlf.hooks.manager import PluginLoadWarning, refresh_plugins
from tests.conftest import tiny_config

PLUGIN = '''
import torch
import xarray as xr
import dlf


class GradNormOptions(dlf.AnalyzerOptions):
    fail_at: int = -1
    stop_at: int = -1
    stop_at_eval: int = -1


class GradNorm(dlf.Analyzer):
    """Records |∇F| per member at its cadence; optionally raises at one step (for the test)."""

    Options = GradNormOptions

    def __init__(self, name, options, run):
        super().__init__(name, options, run)
        self.steps, self.norms = [], []

    @dlf.hookimpl
    def dlf_step_end(self, state):
        if state.step == self.options.fail_at:
            raise RuntimeError("planted failure")
        if state.step == self.options.stop_at:
            state.run.request_stop("planted stop")
        self.steps.append(state.step)
        self.norms.append(state.grad.norm(dim=1).tolist())

    @dlf.hookimpl
    def dlf_evaluate(self, state):
        if state.step == self.options.stop_at_eval:
            state.run.request_stop("planted stop at evaluation")

    @dlf.hookimpl
    def dlf_trace_contribute(self, run):
        return {self.var("norm"): xr.DataArray(
            torch.tensor(self.norms).T.numpy().reshape(run.n_members, len(self.steps)),
            dims=("member", self.var("step")), coords={self.var("step"): self.steps})}


def square(steps, amplitude, period, n_classes):
    """Γ of the class in turn is A for the whole period (raw weights normalised to sum to C)."""
    current = torch.div(steps[:, None], period[None, :], rounding_mode="floor").remainder(n_classes)
    hat = torch.where(current[..., None] == torch.arange(n_classes), amplitude[:, None], 1.0)
    return n_classes * hat / hat.sum(-1, keepdim=True)


@dlf.hookimpl
def dlf_register(registries):
    registries.analyzers.add("gradnorm", GradNorm)
    registries.schedules.add("square", square)
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution 'dlf-gradnorm' with an entry point in group 'dlf', on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "dlf_gradnorm.py").write_text(PLUGIN)
    info = site / "dlf_gradnorm-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dlf-gradnorm\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dlf]\ngradnorm = dlf_gradnorm\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_point_plugin_listed_and_used(installed_plugin, make_config, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed_plugin)}
    listed = subprocess.run(
        [sys.executable, "-m", "dlf.cli", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gradnorm" in listed and "dlf-gradnorm 0.1 (entry point)" in listed
    config = make_config(analyzers={"gradnorm": {"every": 5}})
    ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
    assert list(ds.gradnorm_step.values) == list(range(0, 60, 5))
    assert ds.gradnorm_norm.dims == ("member", "gradnorm_step")
    assert (ds.gradnorm_norm > 0).all()


def test_entry_point_schedule_drives_gamma(installed_plugin, make_config, tmp_path):
    config = make_config(schedule={"name": "square", "amplitude": 4, "period": 10})
    ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
    # A = 4, C = 3: the emphasised class has 3·4/6 = 2, the others 0.5; class 1 in steps 10–19
    assert ds.gamma.isel(member=0).sel(step=15).values.tolist() == [0.5, 2.0, 0.5]


def test_analyzer_options_validated(installed_plugin, make_config):
    from dlf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"analyzers.gradnorm.evry: unknown key"):
        execute(make_config(analyzers={"gradnorm": {"evry": 5}}))


def test_failing_plugin_named_with_step_and_trace_kept(installed_plugin, make_config, tmp_path):
    config = make_config(analyzers={"gradnorm": {"every": 1, "fail_at": 23}})
    with pytest.raises(
        PluginError, match=r"plugin 'analyzer:gradnorm' failed at step 23: RuntimeError"
    ):
        execute(config, trace_path=tmp_path / "t.nc")
    ds = open_trace(tmp_path / "t.nc")
    assert ds.attrs["status"] == "failed" and ds.attrs["steps_completed"] == 23
    assert ds.sizes["step"] == 23
    assert list(ds.gradnorm_step.values) == list(range(23))


@pytest.mark.parametrize(
    ("option", "completed", "last_eval"), [("stop_at", 24, 20), ("stop_at_eval", 20, 20)]
)
def test_a_hook_can_stop_the_run(
    installed_plugin, make_config, tmp_path, option, completed, last_eval
):
    config = make_config(
        analyzers={"gradnorm": {"every": 1, option: 23 if option == "stop_at" else 20}}
    )
    result = execute(config, trace_path=tmp_path / "t.nc")
    ds = open_trace(result.path)
    assert result.status == "stopped" and ds.attrs["status"] == "stopped"
    assert ds.attrs["stop_reason"].startswith("planted stop")
    assert ds.attrs["steps_completed"] == completed and ds.sizes["step"] == completed
    assert int(ds.eval_step[-1]) == last_eval


def test_config_naming_an_installed_plugin_is_harmless(installed_plugin, make_config, tmp_path):
    config = make_config(plugins=["dlf_gradnorm"], analyzers={"gradnorm": {"every": 30}})
    assert "gradnorm_norm" in open_trace(execute(config, trace_path=tmp_path / "t.nc").path)


def test_config_named_plugin_module(tmp_path, make_config):
    mod = tmp_path / "my_local_plugin.py"
    mod.write_text(textwrap.dedent(PLUGIN).replace('"gradnorm"', '"local"'))
    sys.path.insert(0, str(tmp_path))
    try:
        config = make_config(plugins=["my_local_plugin"], analyzers={"local": {"every": 30}})
        ds = open_trace(execute(config, trace_path=tmp_path / "t.nc").path)
        assert "local_norm" in ds
    finally:
        sys.path.remove(str(tmp_path))


def install(site, module: str, source: str, entry: str) -> None:
    """A one-module distribution with entry point ``entry`` in group 'dlf' under ``site``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dlf]\n{entry} = {module}\n")


BROKEN_PLUGINS = {
    "import": "raise RuntimeError('planted import failure')\n",
    "register": (
        "import dlf.plugin\n\n"
        "@dlf.plugin.hookimpl\n"
        "def dlf_register(registries):\n"
        "    registries.losses.add('dce', None)  # a core name: registered twice\n"
    ),
}


@pytest.mark.parametrize("fails_in", sorted(BROKEN_PLUGINS))
def test_a_broken_plugin_is_a_warning_until_a_config_uses_it(
    fails_in, tmp_path, monkeypatch, capsys
):
    from dlf.cli import main

    site = tmp_path / "site"
    site.mkdir()
    install(site, "dlf_broken", BROKEN_PLUGINS[fails_in], entry="broken")
    monkeypatch.syspath_prepend(str(site))

    with pytest.warns(PluginLoadWarning, match="dlf plugin 'broken': dlf_broken 0.1"):
        assert main(["plugins"]) == 0
    assert "broken                   BROKEN: dlf_broken 0.1" in capsys.readouterr().out

    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, train={"steps": 5})))
    refresh_plugins()  # each command is a process of its own: each warns once
    with pytest.warns(PluginLoadWarning):
        assert main(["run", str(path)]) == 0  # unaffected
    capsys.readouterr()

    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "out2", analyzers={"broken": {}})))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["run", str(path)]) == 2
    assert not [w for w in seen if w.category is PluginLoadWarning]  # loaded once: warned once
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dlf-study: error: analyzers.broken: analyzer 'broken' is not")
    assert "planted" in err[-1] or "registered twice" in err[-1]
    assert not (tmp_path / "out2").exists()


def test_a_plugin_variable_named_like_a_core_one_is_refused_and_the_trace_kept(
    tmp_path, make_config
):
    """A contribution called ``loss`` would replace the core series: it must carry the
    plugin's prefix, so the run fails naming the plugin, and the finished trace is written."""
    (tmp_path / "clash.py").write_text(
        "import numpy as np\nimport dlf.plugin\n\n"
        "@dlf.plugin.hookimpl\n"
        "def dlf_trace_contribute(run):\n"
        "    return {'loss': (('member',), np.zeros(run.n_members))}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        config = make_config(plugins=["clash"])
        with pytest.raises(PluginError, match=r"plugin 'clash' .*'loss' must start with 'clash_'"):
            execute(config, trace_path=tmp_path / "t.nc")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("clash", None)
    ds = open_trace(tmp_path / "t.nc")
    assert ds.attrs["status"] == "failed" and ds.attrs["steps_completed"] == 60
    assert ds.loss.dims == ("member", "step") and np.isfinite(ds.loss.values).all()


def test_a_failed_runs_trace_holds_the_divergences_before_the_failure(
    installed_plugin, make_config, tmp_path
):
    """The η = 10⁶ members diverge in the first steps; a plugin fails at step 23, well inside
    the first block of steps: the failed trace still records every divergence."""
    config = make_config(
        train={"lr": [0.5, 1e6], "diverge_above": 100.0},
        analyzers={"gradnorm": {"every": 1, "fail_at": 23}},
    )
    with pytest.raises(PluginError, match="failed at step 23"):
        execute(config, trace_path=tmp_path / "t.nc")
    ds = open_trace(tmp_path / "t.nc")
    assert ds.attrs["status"] == "failed"
    blown = ds.eta.values == 1e6
    assert ((ds.diverged_step.values[blown] >= 0) & (ds.diverged_step.values[blown] < 23)).all()
    assert (ds.diverged_step.values[~blown] == -1).all()


def test_one_command_loads_each_entry_point_once(tmp_path, monkeypatch, capsys):
    """A study reads plugins in its config, its workers, its batches and its report: the
    entry points are imported once per process all the same (counted at EntryPoint.load)."""
    import importlib.metadata
    from collections import Counter

    from dlf.cli import main
    from tests.conftest import study_raw

    loads: Counter[str] = Counter()
    original = importlib.metadata.EntryPoint.load

    def counted(self):
        if self.group == "dlf":
            loads[self.name] += 1
        return original(self)

    monkeypatch.setattr(importlib.metadata.EntryPoint, "load", counted)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_raw(tmp_path / "out", trials=2)))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert set(loads) >= {"lanczos", "ntk", "landscape", "bifurcation"}
    assert set(loads.values()) == {1}, loads


def test_a_dataset_entry_in_the_former_order_still_registers():
    """DatasetEntry(build, options) is ModelEntry's order; (options, build) warns and works."""
    from dlf.numerics.data import SpiralOptions, spiral
    from dlf.plugin import DatasetEntry

    with pytest.warns(DeprecationWarning, match="former order"):
        former = DatasetEntry(SpiralOptions, spiral)
    assert former == DatasetEntry(spiral, SpiralOptions)
    assert former.build is spiral and former.options is SpiralOptions


def test_an_analyzer_generic_in_its_options_validates_with_them(make_config, tmp_path):
    """``Analyzer[Options]`` sets ``Options`` from the type argument: the config section is
    validated with it (an unknown key names the field), no re-declaration needed."""
    from dlf import plugin
    from dlf.testing import registering, run_tiny

    class Scaled(plugin.AnalyzerOptions):
        scale: float = 2.0

    class Probe(plugin.Analyzer[Scaled]):
        pass

    class Plain(plugin.Analyzer):
        pass

    assert Probe.Options is Scaled and Plain.Options is plugin.AnalyzerOptions
    config = make_config(analyzers={"probe": {"scale": 3.0, "colour": 1}})
    with pytest.raises(ConfigError, match=r"analyzers\.probe\.colour"):
        run_tiny(config, registering(probe=Probe))
