"""The ``lanczos`` analyzer plugin: top Hessian eigenvalues (and optionally the spectral density).

Registered through the ``dlf`` entry-point group (``lanczos = "dlf_lanczos"``). Configure it under
``analyzers: lanczos:`` (see :class:`~dlf_lanczos.analyzer.LanczosOptions`).
"""

from __future__ import annotations

from dlf import plugin

from .analyzer import DensityOptions, LanczosAnalyzer, LanczosOptions

__all__ = ["DensityOptions", "LanczosAnalyzer", "LanczosOptions"]


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.analyzers.add("lanczos", LanczosAnalyzer)
