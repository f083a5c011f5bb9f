"""Build a run from a validated config and execute it: data, model, losses, analyzers, trace."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import xarray as xr

from dlf.config import Member, ModelConfig, RunConfig, members_of, validate
from dlf.engine import resume
from dlf.engine.budget import check_analyzers, check_budget, n_members, planned_data_sizes
from dlf.engine.interrupts import interrupts_deferred, terminate_as_interrupt
from dlf.engine.lock import TraceLock
from dlf.engine.recorder import ContributionError, Recorder
from dlf.engine.trace import TRACE_NAME, open_trace
from dlf.engine.trainer import Trainer
from dlf.errors import ConfigError, PluginError, first_line
from dlf.hooks.analyzer import Analyzer
from dlf.hooks.calls import HookCalls
from dlf.hooks.guard import plugin_failure
from dlf.hooks.manager import Plugins, load_plugins
from dlf.hooks.registries import ModelEntry, Registry
from dlf.hooks.state import RunContext
from dlf.numerics.data import Dataset
from dlf.numerics.models import EnsembleWay, ModuleModel
from dlf.numerics.objective import Objective


@dataclass
class RunResult:
    """Where the trace went, how the run ended, and the final parameters."""

    path: Path
    status: str
    theta: torch.Tensor
    resumed_from: int = 0  # the step the run continued from (0: it started afresh)

    def open(self) -> xr.Dataset:
        return open_trace(self.path)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "model.device", f"{name!r} requested but CUDA is not available; allowed: cpu"
        )
    return torch.device(name)


def import_factory(name: str) -> ModelEntry:
    """The model ``module.path:factory`` names, imported (one-line errors naming model.name)."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # any import failure of the user's module is a config problem
        if not plugin_failure(exc):
            raise
        why = first_line(exc)
        raise ConfigError("model.name", f"cannot import {module_name!r} ({why})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError("model.name", f"{module_name!r} has no callable {attribute!r}")
    return ModelEntry(factory)


def build_model(config: ModelConfig, models: Registry[ModelEntry], data: Dataset) -> Any:
    """The run's ensemble model: the flat MLP, or a module factory behind :class:`ModuleModel`.

    A factory is called as ``build(input_shape, n_classes, **options)``; the options are
    validated by the entry's options model, or checked against the factory's signature.
    """
    name = config.name
    entry = import_factory(name) if ":" in name else models.get(name, "model.name")
    if name == "mlp":
        options = {"width": config.width, "depth": config.depth, "activation": config.activation}
    elif entry.options is not None:
        options = validate(entry.options, config.options, prefix="model.options").model_dump()
    else:
        options = config.options
    try:
        inspect.signature(entry.build).bind(data.input_shape, data.n_classes, **options)
    except TypeError as exc:
        raise ConfigError("model.options", f"{name} does not take them: {exc}") from None
    except ValueError:  # a builtin without a signature: its call below says what is wrong
        pass
    factory = functools.partial(entry.build, data.input_shape, data.n_classes, **options)
    try:
        built = factory()
    except BaseException as exc:  # the factory is the config's code: its failure is the config's
        if not plugin_failure(exc):
            raise
        why = first_line(exc, typed=not isinstance(exc, ValueError))
        raise ConfigError("model.name", f"{name}: {why}") from None
    if not isinstance(built, torch.nn.Module):
        if ":" in name or not hasattr(built, "init"):
            raise ConfigError(
                "model.name",
                f"{name} returned a {type(built).__name__}, not a torch.nn.Module",
            )
        return built  # a registered ensemble model over the flat θ itself, as the MLP
    try:
        way = ensemble_way(config, built)
        size = entry.width if entry.width in options else None
        return ModuleModel(
            name,
            cast(Callable[[], torch.nn.Module], factory),  # it built a Module above
            data.input_shape,
            data.n_classes,
            width=int(options[size]) if size else 0,
            width_label=f"{name} {size}" if size else "hidden width",
            ensemble=way,
        )
    except ValueError as exc:  # ModuleModel refusing this module (buffers, shapes)
        raise ConfigError("model.name", f"{name}: {exc}") from None


def ensemble_way(config: ModelConfig, module: torch.nn.Module) -> EnsembleWay:
    """``model.ensemble``, with ``auto`` resolved: one call per member for a convolutional module
    on a CPU (vmap's batched convolution is about half as fast there, docs/performance.md §7),
    else one vmapped call."""
    if config.ensemble != "auto":
        return config.ensemble
    convolutions = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    convolutional = any(isinstance(m, convolutions) for m in module.modules())
    return "loop" if config.device == "cpu" and convolutional else "vmap"


def fixed_samples(n_samples: int, size: int | None) -> torch.Tensor | None:
    """The training samples of the curvature batch: a fixed random ``size`` of them (drawn
    once, the same for every member and step; seed 0), or None for all."""
    if size is None or size >= n_samples:
        return None
    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(0))
    return order[:size].sort().values


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
    model = build_model(config.model, reg.models, data)

    def tensor(values: object, kind: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(values, dtype=kind, device=device)

    steps = config.train.steps
    periods = [m.period for m in members]
    static_from = [config.schedule.first_static_step(p, steps) for p in periods]
    objective = Objective(
        model, loss, static, tensor(data.x_train), tensor(data.y_train, torch.long)
    )
    chosen = fixed_samples(len(data.y_train), config.train.curvature_batch)
    curvature_objective = objective if chosen is None else objective.restricted(chosen)
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
        curvature_objective=curvature_objective,
        hook=plugins.manager.hook,
    )


def build_analyzers(config: RunConfig, plugins: Plugins, run: RunContext) -> dict[str, Analyzer]:
    """One fresh analyzer object per configured name, options validated by its own model."""
    analyzers = {}
    for name, raw in config.analyzers.items():
        cls = plugins.registries.analyzers.get(name, f"analyzers.{name}")
        options = validate(cls.Options, raw, prefix=f"analyzers.{name}")
        analyzers[name] = cls(name, options, run)
    return analyzers


def prepare(
    config: RunConfig,
    *,
    members: Sequence[Member] | None = None,
    plugins: Plugins | None = None,
) -> tuple[Plugins, list[Member], RunContext]:
    """Everything :func:`execute` checks before it writes: plugins, registry names, data and
    analyzer options, and the memory the run would need. Raises ConfigError; writes nothing.
    Sweeps call this for every point before running the first."""
    plugins = plugins or load_plugins(config.plugins)
    planned = planned_data_sizes(config, plugins.registries)  # before the data is allocated
    if members is None:
        check_budget(config, n_members(config), **planned)
        members = members_of(config)
    else:
        members = list(members)
        check_budget(config, len(members), **planned)
    run = build_context(config, plugins, members)
    data = run.data
    check_budget(
        config,
        len(members),
        **{
            **planned,
            "n_features": data.n_features,
            "n_classes": data.n_classes,
            "n_train": len(data.y_train),
            "n_val": len(data.y_val),
        },
    )
    run.analyzers = build_analyzers(config, plugins, run)
    check_analyzers(run.analyzers, config.model.device)
    return plugins, members, run


def default_trace_path(config: RunConfig) -> Path:
    """Where a run's trace goes unless told otherwise: ``<output.root>/<name>/trace.nc``."""
    return config.output.root / config.name / TRACE_NAME


def execute(
    config: RunConfig,
    *,
    members: Sequence[Member] | None = None,
    trace_path: Path | None = None,
    plugins: Plugins | None = None,
    progress: bool | None = None,
    fresh: bool = False,
) -> RunResult:
    """Train the config's ensemble (or ``members``) and write the trace; returns where it went.

    Everything that can be wrong with the config is checked before any file is written. The
    trace is locked for the run (a second run aimed at it is refused), written once before the
    first step (core variables, ``status = "running"``), at checkpoints, on failure, Ctrl-C or
    SIGTERM, and at the end. A run without analyzers also saves, at each checkpoint, what it
    needs to continue (:mod:`dlf.engine.resume`), and continues from there when run again
    with the same settings and members, unless ``fresh``.
    """
    plugins, members, run = prepare(config, members=members, plugins=plugins)
    path = trace_path or default_trace_path(config)
    if progress is None:
        progress = config.output.wants_progress()
    schedule = plugins.registries.schedules.get(config.schedule.name, "schedule.name")
    pm = plugins.manager
    fingerprint = resume.fingerprint(config, members)
    with TraceLock(path), terminate_as_interrupt():
        recorder = Recorder(run, path, config.output.checkpoint_seconds)
        checkpoint = resume.continued(recorder, fingerprint, fresh)
        contributions = Contributions(pm, run, recorder)
        theta0 = (
            run.model.init([m.seed for m in members], config.model.init, run.dtype, run.device)
            if checkpoint is None
            else checkpoint.theta
        )
        save = (
            None if run.analyzers else functools.partial(resume.save, path, fingerprint=fingerprint)
        )
        trainer = Trainer(run, plugins, schedule, recorder, contributions, progress, save)
        try:
            for name, analyzer in run.analyzers.items():  # the manager is shared: lent per run
                pm.register(analyzer, name=f"analyzer:{name}")
            try:
                recorder.write()  # the first checkpoint: a run killed now still leaves a trace
                theta, ending = trainer.train(theta0, checkpoint)
            except (PluginError, KeyboardInterrupt) as exc:
                with interrupts_deferred():  # a second Ctrl-C waits for this last write
                    recorder.finish("failed" if isinstance(exc, PluginError) else "interrupted")
                    contributions.write_after_failure()
                raise
            recorder.finish(ending, run.stop_reason)
            contributions.write_final()
            resume.discard(path)
        finally:
            for name in run.analyzers:
                if pm.has_plugin(f"analyzer:{name}"):
                    pm.unregister(name=f"analyzer:{name}")
    return RunResult(path, recorder.status, theta, 0 if checkpoint is None else checkpoint.step)


def resume_point(config: RunConfig, members: Sequence[Member], trace: Path) -> int:
    """The step a run of ``config`` with ``members`` would continue from at ``trace`` (0: it
    would start afresh), for callers that replay what happened before (a study's monitor)."""
    if config.analyzers:
        return 0
    found = resume.continuable(trace, resume.fingerprint(config, members), torch.device("cpu"))
    return 0 if found is None else found[0].step


class Contributions:
    """Collects ``dlf_trace_contribute`` from each plugin in turn, so that a failure names the
    plugin; every variable (and coordinate) a plugin adds must carry its prefix."""

    def __init__(self, pm: Any, run: RunContext, recorder: Recorder) -> None:
        self.pm, self.run, self.recorder = pm, run, recorder
        self.owner: dict[str, str] = {}  # variable → the plugin that contributed it

    def __call__(self) -> dict[str, object]:
        merged: dict[str, object] = {}
        self.owner = {}
        step = self.recorder.steps_completed
        for plugin, results in HookCalls(self.pm).each("dlf_trace_contribute", step, run=self.run):
            if not results:  # it returned None
                continue
            result = results[0]
            if not isinstance(result, Mapping):
                why = f"must return a dict of trace variables, not {type(result).__name__}"
                raise PluginError(plugin, step, TypeError(why))
            prefix = plugin_prefix(plugin)
            for name, value in result.items():
                if not str(name).startswith(prefix):
                    why = f"trace variable {name!r} must start with {prefix!r}"
                    raise PluginError(plugin, step, ValueError(why))
                foreign = [d for d in names_used(value) if not d.startswith(prefix)]
                foreign = [d for d in foreign if d not in CORE_DIMS]
                if foreign:
                    why = (
                        f"trace dimension {foreign[0]!r} of {name!r} must start with {prefix!r} "
                        f"or be one of the core's ({', '.join(CORE_DIMS)})"
                    )
                    raise PluginError(plugin, step, ValueError(why))
                if name in merged:
                    why = f"trace variable {name!r} contributed twice"
                    raise PluginError(plugin, step, ValueError(why))
                merged[name] = value
                self.owner[name] = plugin
        return merged

    def write_final(self) -> None:
        """The last write, with every contribution; if one fails (or cannot join the trace),
        the trace of the finished steps is written without them (``status = "failed"``) and
        the error names the plugin."""
        recorder = self.recorder
        try:
            recorder.write(self())
        except ContributionError as exc:
            recorder.finish("failed")
            recorder.write()
            self.raise_for(exc)
        except PluginError:
            recorder.finish("failed")
            recorder.write()
            raise

    def write_after_failure(self) -> None:
        """The trace after a failure or an interruption: with the contributions if they work,
        else without them."""
        try:
            self.recorder.write(self())
        except (PluginError, ContributionError):
            self.recorder.write()

    def raise_for(self, exc: ContributionError) -> None:
        """A contribution that could not join the trace, as the error of its plugin."""
        owner = self.owner.get(exc.name, "unknown plugin")
        raise PluginError(owner, self.recorder.steps_completed, exc) from None


#: The core trace's dimensions, which contributions may share; any other dimension (and any
#: coordinate) a plugin adds carries its prefix, as its variables do, so two plugins never
#: collide on a name like ``k``.
CORE_DIMS = ("member", "step", "eval_step", "class_index")


def names_used(value: object) -> list[str]:
    """The dimensions and coordinates of a contributed value (a DataArray, a Variable or a
    ``(dims, data[, attrs])`` tuple); nothing for a value that has none."""
    if isinstance(value, tuple):
        dims = value[0] if value else ()
        coords: tuple[object, ...] = ()
    else:
        dims = getattr(value, "dims", ())
        coords = tuple(getattr(value, "coords", ()))
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    return [str(n) for n in dict.fromkeys((*dims, *coords))]


def plugin_prefix(plugin_name: str) -> str:
    """``analyzer:lanczos`` → ``lanczos_``; a module plugin ``pkg.mod`` → ``mod_``."""
    base = plugin_name.removeprefix("analyzer:").rsplit(".", 1)[-1]
    return f"{base}_"
