"""The ``landscape`` analyzer plugin: 2D slices of the loss around θ_t with the trajectory on them.

Registered through the ``dlf`` entry-point group (``landscape = "dlf_landscape"``). Configure it
under ``analyzers: landscape:`` (see :class:`~dlf_landscape.analyzer.LandscapeOptions`).
"""

from __future__ import annotations

from dlf import plugin

from .analyzer import LandscapeAnalyzer, LandscapeOptions

__all__ = ["LandscapeAnalyzer", "LandscapeOptions"]


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.analyzers.add("landscape", LandscapeAnalyzer)
