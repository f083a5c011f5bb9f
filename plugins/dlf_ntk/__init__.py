"""The ``ntk`` analyzer plugin: top eigenvalues of the empirical neural tangent kernel.

Registered through the ``dlf`` entry-point group (``ntk = "dlf_ntk"``). Configure it under
``analyzers: ntk:`` (see :class:`~dlf_ntk.analyzer.NTKOptions`).
"""

from __future__ import annotations

from dlf import plugin

from .analyzer import NTKAnalyzer, NTKOptions

__all__ = ["NTKAnalyzer", "NTKOptions"]


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.analyzers.add("ntk", NTKAnalyzer)
