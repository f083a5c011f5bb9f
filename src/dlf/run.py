"""Build a run from a validated config and execute it: data, model, losses, analyzers, trace."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import xarray as xr

from dlf.analyzer import Analyzer
from dlf.config import Member, RunConfig, members_of, validate
from dlf.errors import ConfigError, PluginError
from dlf.models import MLP
from dlf.objective import Objective
from dlf.plugin_manager import Plugins, load_plugins
from dlf.state import RunContext
from dlf.trace import Recorder
from dlf.trainer import Trainer

TRACE_NAME = "trace.nc"


@dataclass
class RunResult:
    """Where the trace went, how the run ended, and the final parameters."""

    path: Path
    status: str
    theta: torch.Tensor

    def open(self) -> xr.Dataset:
        from dlf.trace import open_trace

        return open_trace(self.path)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "model.device", f"{name!r} requested but CUDA is not available; allowed: cpu"
        )
    return torch.device(name)


def build_context(config: RunConfig, plugins: Plugins, members: Sequence[Member]) -> RunContext:
    """Everything fixed during the run, on the configured device and dtype."""
    reg = plugins.registries
    entry = reg.datasets.get(config.data.name, "data.name")
    data = entry.build(validate(entry.options, config.data.options, prefix="data"))
    loss = reg.losses.get(config.loss.name, "loss.name")
    static = reg.losses.get(loss.static_name, "loss.name")
    reg.schedules.get(config.schedule.name, "schedule.name")
    device = resolve_device(config.model.device)
    dtype = getattr(torch, config.model.dtype)
    hidden = (config.model.width,) * config.model.depth
    model = MLP(data.n_features, hidden, data.n_classes, config.model.activation)

    def tensor(values: object, kind: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(values, dtype=kind, device=device)

    steps = config.train.steps
    periods = [m.period for m in members]
    static_from = [config.schedule.first_static_step(p, steps) for p in periods]
    objective = Objective(
        model, loss, static, tensor(data.x_train), tensor(data.y_train, torch.long)
    )
    return RunContext(
        config=config,
        members=list(members),
        data=data,
        objective=objective,
        x_val=tensor(data.x_val),
        y_val=tensor(data.y_val, torch.long),
        amplitude=tensor([m.amplitude for m in members]),
        period=tensor(periods),
        lr=tensor([m.lr for m in members]),
        static_from=tensor(static_from),
        total_steps=steps,
    )


def build_analyzers(config: RunConfig, plugins: Plugins, run: RunContext) -> dict[str, Analyzer]:
    """One fresh analyzer object per configured name, options validated by its own model."""
    analyzers = {}
    for name, raw in config.analyzers.items():
        cls = plugins.registries.analyzers.get(name, f"analyzers.{name}")
        options = validate(cls.Options, raw, prefix=f"analyzers.{name}")
        analyzers[name] = cls(name, options, run)
    return analyzers


def execute(
    config: RunConfig,
    *,
    members: Sequence[Member] | None = None,
    trace_path: Path | None = None,
    plugins: Plugins | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Train the config's ensemble (or ``members``) and write the trace; returns where it went.

    Everything that can be wrong with the config is checked before any file is written.
    """
    plugins = plugins or load_plugins(config.plugins)
    members = list(members) if members is not None else members_of(config)
    run = build_context(config, plugins, members)
    run.analyzers = build_analyzers(config, plugins, run)
    path = trace_path or config.output.root / config.name / TRACE_NAME
    if progress is None:
        mode = config.output.progress
        progress = mode == "always" or (mode == "auto" and sys.stderr.isatty())
    recorder = Recorder(run, path, config.output.checkpoint_seconds)
    schedule = plugins.registries.schedules.get(config.schedule.name, "schedule.name")
    pm = plugins.manager

    def contributions() -> dict[str, object]:
        merged: dict[str, object] = {}
        try:
            results = pm.hook.dlf_trace_contribute(run=run)
        except Exception as exc:
            raise PluginError("trace contribution", recorder.steps_completed, exc) from exc
        for result in results:
            for name, value in (result or {}).items():
                if name in merged:
                    raise ValueError(f"trace variable {name!r} contributed twice")
                merged[name] = value
        return merged

    for name, analyzer in run.analyzers.items():
        pm.register(analyzer, name=f"analyzer:{name}")
    theta0 = run.model.init([m.seed for m in members], config.model.init, run.dtype, run.device)
    trainer = Trainer(run, plugins, schedule, recorder, contributions, progress)
    try:
        try:
            theta = trainer.train(theta0)
        except (PluginError, KeyboardInterrupt) as exc:
            recorder.status = "failed" if isinstance(exc, PluginError) else "interrupted"
            recorder.write(_contributions_or_none(contributions))
            raise
        recorder.write(contributions())
    finally:
        for name in run.analyzers:
            pm.unregister(name=f"analyzer:{name}")
    return RunResult(path, recorder.status, theta)


def _contributions_or_none(contributions: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Contributions for a trace written after a failure; if a contributor fails too, none."""
    try:
        return contributions()
    except Exception:
        return {}
