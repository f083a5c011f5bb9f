"""The base class of analyzers: plugin objects built from their config section, one set per run."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from dlf.hooks.state import RunContext


class AnalyzerOptions(BaseModel):
    """Options every analyzer understands; subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, description="run at steps that are multiples of this")


class Analyzer:
    """Subclass this, give it an ``Options`` model and ``@dlf.hookimpl`` methods for the events.

    The trainer registers the instance with the plugin manager for one run. At each step it asks
    :meth:`due`; the ``dlf_step_end`` implementations of analyzers that are not due are skipped.
    """

    Options: ClassVar[type[AnalyzerOptions]] = AnalyzerOptions

    def __init__(self, name: str, options: AnalyzerOptions, run: RunContext) -> None:
        self.name = name
        self.options = options
        self.run = run

    def due(self, step: int) -> bool:
        return step % self.options.every == 0

    def memory(self) -> dict[str, float]:
        """Bytes this analyzer will hold at most, by the option that scales them (``grid``,
        ``k``): the run is refused before its first step if they cannot fit, naming the option.
        The default, nothing, suits an analyzer whose memory no option scales."""
        return {}

    def var(self, key: str) -> str:
        """The trace variable name for ``key``: prefixed with this analyzer's name."""
        return f"{self.name}_{key}"
