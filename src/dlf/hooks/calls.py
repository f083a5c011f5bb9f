"""Calling a hook one plugin at a time through pluggy, so that a failure is known to be that
plugin's: the one way the core blames a plugin (registration, run-time events, contributions).

Each plugin is called through its own :class:`pluggy.HookCaller`, a subset of the manager's
(``PluginManager.subset_hook_caller``) holding that plugin's implementation and every plugin's
wrappers, in the order pluggy would call them (``tryfirst``/``trylast`` kept). pluggy's calling
rules (argument selection, historic hooks, wrappers) so hold for every hook, and the plugin that
raised is the one being called: no traceback is read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import pluggy

from dlf.errors import PluginError
from dlf.hooks.guard import plugin_failure


class HookCalls:
    """Per-plugin callers of the hooks of ``pm``, cached: build one while the registered
    plugins stay the same (a run, a registration round)."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._callers: dict[tuple[Any, ...], list[tuple[str, pluggy.HookCaller]]] = {}

    def callers(
        self, hook: str, skip: Collection[object] = ()
    ) -> list[tuple[str, pluggy.HookCaller]]:
        """(plugin name, its caller) for each plugin implementing ``hook`` but those in
        ``skip``, in pluggy's calling order."""
        key = (hook, *map(id, skip))
        found = self._callers.get(key)
        if found is None:
            found = self._callers[key] = self._build(hook, {id(p) for p in skip})
        return found

    def _build(self, hook: str, skip: set[int]) -> list[tuple[str, pluggy.HookCaller]]:
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        plain = [i for i in reversed(impls) if not (i.hookwrapper or i.wrapper)]
        implementers = {id(i.plugin): i.plugin for i in plain}
        callers, seen = [], set(skip)
        for impl in plain:
            if id(impl.plugin) in seen:
                continue
            seen.add(id(impl.plugin))
            others = [p for k, p in implementers.items() if k != id(impl.plugin)]
            callers.append((impl.plugin_name, self.pm.subset_hook_caller(hook, others)))
        return callers

    def each(
        self, hook: str, step: int | None, skip: Collection[object] = (), **kwargs: Any
    ) -> Iterator[tuple[str, list[Any]]]:
        """Call ``hook`` plugin by plugin, yielding each one's results; the first that fails
        (an exception, or its own ``sys.exit()``/``KeyboardInterrupt``) raises
        :class:`~dlf.errors.PluginError` naming it, and the plugins after it are not called."""
        for name, caller in self.callers(hook, skip):
            try:
                results = caller(**kwargs)
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                raise PluginError(name, step, exc) from exc
            yield name, results

    def call(
        self, hook: str, step: int | None, skip: Collection[object] = (), **kwargs: Any
    ) -> None:
        """Call ``hook`` plugin by plugin, as :meth:`each`, for its effects."""
        for _ in self.each(hook, step, skip, **kwargs):
            pass
