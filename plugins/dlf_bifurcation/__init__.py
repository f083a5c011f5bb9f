"""The ``bifurcation`` analyzer plugin: edge-of-stability instabilities and λmax at their onsets.

Registered through the ``dlf`` entry-point group (``bifurcation = "dlf_bifurcation"``). Configure
it under ``analyzers: bifurcation:`` (see :class:`~dlf_bifurcation.analyzer.BifurcationOptions`);
add ``lanczos`` to record λmax, λ2, λ3 at the onsets.
"""

from __future__ import annotations

import pluggy

from dlf import plugin

from . import hookspecs
from .analyzer import BifurcationAnalyzer, BifurcationOptions

__all__ = ["BifurcationAnalyzer", "BifurcationOptions"]


@plugin.hookimpl
def dlf_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.analyzers.add("bifurcation", BifurcationAnalyzer)
