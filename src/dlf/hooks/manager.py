"""Build the pluggy plugin manager: core modules, entry-point plugins and config-named modules.

An installed entry point that fails to load (its import raises, or its ``dlf_register`` does)
does not break every command: it is reported once as a :class:`PluginLoadWarning` naming it,
``dlf-study plugins`` lists it as broken, and a config that names something it would have
registered gets a one-line error saying why it is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType, TracebackType

import pluggy

from dlf.errors import ConfigError, DlfWarning
from dlf.hooks import specs
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

    def source_of(self, plugin_name: str) -> str:
        """Where a plugin came from: its distribution for entry points, else its module."""
        return self.sources.get(plugin_name, "config `plugins:`")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return "an unknown distribution" if dist is None else f"{dist.name} {dist.version}"


def load_plugins(extra_modules: Sequence[str] = ()) -> Plugins:
    """Register the core, the ``dlf`` entry points and ``extra_modules``; fill the registries."""
    pm = pluggy.PluginManager("dlf")
    pm.add_hookspecs(specs)
    pm.hook.dlf_addhooks.call_historic(kwargs={"pluginmanager": pm})
    plugins = Plugins(pm, Registries())
    for name in CORE_MODULES:
        pm.register(importlib.import_module(name), name=name)
        plugins.sources[name] = "dlf core"
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(ep.name):
            continue
        source = f"{_distribution(ep)} (entry point)"
        try:
            pm.register(ep.load(), name=ep.name)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt at import: still broken
            if not plugin_failure(exc):
                raise
            _mark_broken(plugins, ep.name, f"{source} failed to import: {_why(exc)}")
            continue
        plugins.sources[ep.name] = source
    for i, name in enumerate(extra_modules):
        module = _import_named(name, f"plugins.{i}")
        if not pm.is_registered(module):  # already there through its entry point
            pm.register(module, name=name)
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
    for impl in plugins.manager.hook.dlf_register.get_hookimpls():
        name = impl.plugin_name
        registries.asked_by(name)
        try:
            impl.function(registries=registries)
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


def _mark_broken(plugins: Plugins, name: str, why: str) -> None:
    plugins.registries.broken[name] = why
    plugins.sources[name] = f"BROKEN: {why}"
    if plugins.manager.has_plugin(name):
        plugins.manager.unregister(name=name)
    warnings.warn(f"dlf plugin {name!r}: {why}", PluginLoadWarning, stacklevel=3)


def blame(hook: pluggy.HookCaller, tb: TracebackType | None) -> str:
    """The name of the plugin whose implementation of ``hook`` appears in traceback ``tb``."""
    codes = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
    found = "unknown plugin"
    while tb is not None:
        code = tb.tb_frame.f_code
        if code in codes:
            found = codes[code]
        tb = tb.tb_next
    return found
