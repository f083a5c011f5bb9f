"""Build the pluggy plugin manager: core modules, entry-point plugins and config-named modules."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import pluggy

from dlf.errors import ConfigError, DlfError
from dlf.hooks import specs as hookspecs
from dlf.hooks.registries import Registries

ENTRY_POINT_GROUP = "dlf"
CORE_MODULES = ("dlf.numerics.data", "dlf.numerics.losses", "dlf.numerics.schedules")


@dataclass
class Plugins:
    """The plugin manager together with the registries its plugins filled."""

    manager: pluggy.PluginManager
    registries: Registries

    def source_of(self, plugin_name: str) -> str:
        """Where a plugin came from: its distribution for entry points, else its module."""
        plugin = self.manager.get_plugin(plugin_name)
        for plug, dist in self.manager.list_plugin_distinfo():
            if plug is plugin:
                return f"{dist.project_name} {dist.version} (entry point)"
        return "dlf core" if plugin_name in CORE_MODULES else "config `plugins:`"


def load_plugins(extra_modules: Sequence[str] = ()) -> Plugins:
    """Register the core, the ``dlf`` entry points and ``extra_modules``; fill the registries."""
    pm = pluggy.PluginManager("dlf")
    pm.add_hookspecs(hookspecs)
    for name in CORE_MODULES:
        pm.register(importlib.import_module(name), name=name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        raise DlfError(
            f"a plugin installed in entry-point group {ENTRY_POINT_GROUP!r} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for i, name in enumerate(extra_modules):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins.{i}", f"cannot import {name!r}: {exc}") from None
        if not pm.is_registered(module):  # already there through its entry point
            pm.register(module, name=name)
    registries = Registries()
    for impl in pm.hook.dlf_register.get_hookimpls():
        registries.asked_by(impl.plugin_name)
        impl.function(registries=registries)
    return Plugins(pm, registries)


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
