"""The event the bifurcation analyzer announces, for other plugins to implement.

Added to the plugin manager through ``dlf_addhooks``; the ``landscape`` analyzer implements it
to slice the loss at each onset. A plugin implementing it needs no knowledge of the detector.
"""

from __future__ import annotations

from dlf.plugin import RunContext, hookspec


@hookspec
def dlf_instability(run: RunContext, member: int, onset: int, step: int) -> None:
    """The detector found a new period-doubling onset of ``member`` at step ``onset``.

    It is announced at ``step`` ≥ ``onset``: the detector reads the loss in blocks, so an onset
    is known up to a block (and the detector's ``min_length``) after it happened.
    """
