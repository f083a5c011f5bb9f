"""Build the pluggy plugin manager: core modules, entry-point plugins and config-named modules.

An installed entry point that fails to load (its import raises, or its ``dlf_register`` does)
does not break every command: it is reported once as a :class:`PluginLoadWarning` naming it,
``dlf-study plugins`` lists it as broken, and a config that names something it would have
registered gets a one-line error saying why it is missing.

Plugins are loaded once per process, as xarray's ``list_engines()``: each entry point is imported
once, and the manager built for a set of config-named modules is kept; :func:`refresh_plugins`
forgets both (after installing a plugin into a running process, or in tests that do).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from dlf.errors import ConfigError, DlfWarning
from dlf.hooks import specs
from dlf.hooks.calls import HookCalls
from dlf.hooks.guard import plugin_failure
from dlf.hooks.registries import Registries

ENTRY_POINT_GROUP = "dlf"
CORE_MODULES = ("dlf.hooks.builtins",)


class PluginLoadWarning(DlfWarning):
    """An installed plugin could not be loaded; commands that do not use it go on."""


@dataclass
class Plugins:
    """The plugin manager, the registries its plugins filled, and the plugins that failed."""

    manager: pluggy.PluginManager
    registries: Registries
    sources: dict[str, str] = field(default_factory=dict)  # plugin name → where it came from

    @property
    def broken(self) -> dict[str, str]:
        """Entry-point plugins that failed to load: name → why."""
        return self.registries.broken

    @contextmanager
    def registered(self, plugin: object | None, name: str) -> Iterator[None]:
        """``plugin`` registered as ``name`` for the duration (None: nothing): the manager is
        shared by the process, so what one run lends it is taken back."""
        if plugin is not None:
            self.manager.register(plugin, name=name)
        try:
            yield
        finally:
            if plugin is not None:
                self.manager.unregister(name=name)

    def source_of(self, plugin_name: str) -> str:
        """Where a plugin came from: its distribution for entry points, else its module."""
        return self.sources.get(plugin_name, "config `plugins:`")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return "an unknown distribution" if dist is None else f"{dist.name} {dist.version}"


@dataclass(frozen=True)
class EntryPointPlugin:
    """An entry point of the ``dlf`` group as imported: its module, or why the import failed."""

    name: str
    source: str  # its distribution, for ``dlf-study plugins``
    module: object | None
    failure: str = ""


@functools.cache
def entry_point_plugins() -> tuple[EntryPointPlugin, ...]:
    """Every ``dlf`` entry point, imported once per process; a failed import is warned of once."""
    found: dict[str, EntryPointPlugin] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found or ep.name in CORE_MODULES:
            continue
        source = f"{_distribution(ep)} (entry point)"
        try:
            found[ep.name] = EntryPointPlugin(ep.name, source, ep.load())
        except BaseException as exc:  # SystemExit, KeyboardInterrupt at import: still broken
            if not plugin_failure(exc):
                raise
            why = f"{source} failed to import: {_why(exc)}"
            found[ep.name] = EntryPointPlugin(ep.name, source, None, why)
            _warn(ep.name, why)
    return tuple(found.values())


def load_plugins(extra_modules: Sequence[str] = ()) -> Plugins:
    """The core, the ``dlf`` entry points and ``extra_modules`` registered, the registries
    filled: built once per process for each ``extra_modules`` and shared (read-only) after."""
    return _load(tuple(extra_modules))


def refresh_plugins() -> None:
    """Forget the loaded plugins: the next :func:`load_plugins` discovers them again."""
    entry_point_plugins.cache_clear()
    _load.cache_clear()


def plugins_with(objects: Sequence[object], extra_modules: Sequence[str] = ()) -> Plugins:
    """A plugin manager of its own, not shared: the installed plugins, ``extra_modules`` and
    the plugin ``objects`` (modules, or objects with hook implementations) registered through
    pluggy as given, without installing them (:mod:`dlf.testing` runs plugins under test so)."""
    return _build(tuple(extra_modules), tuple(objects))


@functools.cache
def _load(extra_modules: tuple[str, ...]) -> Plugins:
    return _build(extra_modules, ())


def _build(extra_modules: tuple[str, ...], objects: tuple[object, ...]) -> Plugins:
    pm = pluggy.PluginManager("dlf")
    pm.add_hookspecs(specs)
    pm.hook.dlf_addhooks.call_historic(kwargs={"pluginmanager": pm})
    plugins = Plugins(pm, Registries())
    for name in CORE_MODULES:
        pm.register(importlib.import_module(name), name=name)
        plugins.sources[name] = "dlf core"
    for found in entry_point_plugins():
        if found.module is None:
            _mark_broken(plugins, found.name, found.failure, warn=False)
        else:
            pm.register(found.module, name=found.name)
            plugins.sources[found.name] = found.source
    for i, name in enumerate(extra_modules):
        module = _import_named(name, f"plugins.{i}")
        if not pm.is_registered(module):  # already there through its entry point
            pm.register(module, name=name)
    for obj in objects:
        if pm.is_registered(obj):  # installed as well: the entry point's registration stands
            continue
        registered = pm.register(obj, name=getattr(obj, "__name__", None))
        plugins.sources[str(registered)] = "registered by the caller"
    _fill_registries(plugins, extra_modules)
    return plugins


def _import_named(name: str, field_path: str) -> ModuleType:
    """A module named in a config's ``plugins:``; any failure is that field's error."""
    try:
        return importlib.import_module(name)
    except BaseException as exc:
        if not plugin_failure(exc):
            raise
        raise ConfigError(field_path, f"cannot import {name!r}: {_why(exc)}") from None


def _fill_registries(plugins: Plugins, extra_modules: Sequence[str]) -> None:
    """Ask every plugin's ``dlf_register``; an entry point that fails there is marked broken
    (what it registered is taken back), a config-named module's failure is a config error."""
    registries = plugins.registries
    order = [name for name, _ in plugins.manager.list_name_plugin()]
    callers = HookCalls(plugins.manager).callers("dlf_register")
    # in the order of registration (core first), not pluggy's last-first: a name registered
    # twice is the later plugin's fault
    for name, caller in sorted(callers, key=lambda pair: order.index(pair[0])):
        registries.asked_by(name)
        try:
            caller(registries=registries)
        except BaseException as exc:
            if not plugin_failure(exc):
                raise
            registries.withdraw(name)
            if name in extra_modules:
                where = f"plugins.{list(extra_modules).index(name)}"
                raise ConfigError(where, f"{name!r} failed to register: {_why(exc)}") from None
            if name in CORE_MODULES:
                raise
            _mark_broken(plugins, name, f"{plugins.sources[name]} failed to register: {_why(exc)}")


def _mark_broken(plugins: Plugins, name: str, why: str, warn: bool = True) -> None:
    plugins.registries.broken[name] = why
    plugins.sources[name] = f"BROKEN: {why}"
    if plugins.manager.has_plugin(name):
        plugins.manager.unregister(name=name)
    if warn:
        _warn(name, why)


def _warn(name: str, why: str) -> None:
    warnings.warn(f"dlf plugin {name!r}: {why}", PluginLoadWarning, stacklevel=4)
