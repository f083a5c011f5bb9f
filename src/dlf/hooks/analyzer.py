"""The base class of analyzers: plugin objects built from their config section, one set per run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from dlf.hooks.state import RunContext


class AnalyzerOptions(BaseModel):
    """Options every analyzer understands; subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, description="run at steps that are multiples of this")


OptionsT = TypeVar("OptionsT", bound=AnalyzerOptions)


class Analyzer(Generic[OptionsT]):
    """Subclass this as ``Analyzer[MyOptions]`` with ``@dlf.hookimpl`` methods for the events.

    The options model is the type argument (``Options`` is set from it; an analyzer without
    options of its own subclasses plain ``Analyzer``): ``self.options`` is typed as it, and the
    config section is validated with it. The trainer registers the instance with the plugin
    manager for one run. At each step it asks :meth:`due`, by default at multiples of
    ``every``; the ``dlf_step_end`` implementations of analyzers that are not due are skipped.
    An analyzer with a schedule of its own (landscape) overrides :meth:`due` and leaves
    ``every`` at 1.
    """

    Options: ClassVar[type[AnalyzerOptions]] = AnalyzerOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in vars(cls):
            return
        for base in getattr(cls, "__orig_bases__", ()):
            args = get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], AnalyzerOptions):
                cls.Options = args[0]

    def __init__(self, name: str, options: OptionsT, run: RunContext) -> None:
        self.name = name
        self.options: OptionsT = options
        self.run = run

    def due(self, step: int) -> bool:
        return step % self.options.every == 0

    def memory(self) -> dict[str, float]:
        """Bytes this analyzer will hold at most, by the option that scales them (``grid``,
        ``k``): the run is refused before its first step if they cannot fit, naming the option.
        The default, nothing, suits an analyzer whose memory no option scales."""
        return {}

    def var(self, key: str) -> str:
        """The trace name (variable or dimension) for ``key``: prefixed with this analyzer's
        name, as every name a plugin adds to the trace must be."""
        return f"{self.name}_{key}"
