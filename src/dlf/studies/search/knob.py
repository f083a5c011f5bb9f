"""The model option a study's width ladder sets: its *size knob*.

The MLP's knob is ``model.width``; a registered model declares its own
(:class:`~dlf.hooks.registries.ModelEntry` ``width``: myrtle5's is ``channels``); a
``module.path:factory`` model has the keyword ``search.width.option`` names. The search sets
that option for every trial and the config must leave it out, and the study's messages, plan,
``study.nc`` and report name it (``channels 16``, not ``width 16``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from dlf.config import RunConfig
from dlf.engine.run import import_factory
from dlf.errors import ConfigError
from dlf.hooks.manager import load_plugins

FIELD = "search.width.option"


@dataclass(frozen=True)
class WidthKnob:
    """The option ``option`` of model ``model`` that a study ladders over."""

    model: str
    option: str

    @property
    def is_mlp_width(self) -> bool:
        return self.model == "mlp"

    @property
    def field(self) -> str:
        """Where the option lives in a run config: ``model.width`` or ``model.options.<name>``."""
        return "model.width" if self.is_mlp_width else f"model.options.{self.option}"

    @property
    def label(self) -> str:
        """The knob in a sentence: ``width`` for the MLP, else e.g. ``myrtle5 channels``."""
        return "width" if self.is_mlp_width else f"{self.model} {self.option}"

    @property
    def tag(self) -> str:
        """Its short form in trace file names: ``w`` for the MLP (older studies' names), else
        the option's name."""
        return "w" if self.is_mlp_width else self.option

    def apply(self, run: RunConfig, value: int) -> RunConfig:
        """``run`` with the knob set to ``value``."""
        model = run.model
        if self.is_mlp_width:
            update: dict[str, Any] = {"width": value}
        else:
            update = {"options": {**model.options, self.option: value}}
        return run.model_copy(update={"model": model.model_copy(update=update)})


def width_knob(run: RunConfig, option: str | None) -> WidthKnob:
    """The knob of ``run``'s model: ``option`` (``search.width.option``) checked against what
    the model takes, or the model's declared one. One-line ConfigErrors naming
    ``search.width.option`` and the model otherwise."""
    model = run.model
    if model.name == "mlp":
        if option not in (None, "width"):
            raise ConfigError(FIELD, f"mlp's width is model.width; got {option!r}, allowed: width")
        return WidthKnob("mlp", "width")
    if ":" in model.name:
        entry = import_factory(model.name)
        declared = None
    else:
        entry = load_plugins(run.plugins).registries.models.get(model.name, "model.name")
        declared = entry.width
    allowed = _keywords(entry.build, entry.options)
    chosen = option or declared
    if chosen is None:
        raise ConfigError(
            FIELD,
            f"model {model.name} declares no width option: name the keyword the width ladder "
            f"sets ({_choices(allowed)})",
        )
    if allowed is not None and chosen not in allowed:
        raise ConfigError(
            FIELD,
            f"model {model.name} has no option {chosen!r}; allowed: {', '.join(allowed)}",
        )
    return WidthKnob(model.name, chosen)


def _choices(allowed: list[str] | None) -> str:
    if allowed is None:
        return "it takes any keyword"
    return f"one of: {', '.join(allowed)}" if allowed else "it takes none"


def _keywords(build: Any, options: Any) -> list[str] | None:
    """The options a model takes by name (its options model's fields, else its factory's
    keyword parameters after ``input_shape, n_classes``), or None where any name goes
    (``**kwargs``, or a builtin without a signature)."""
    if options is not None:
        return sorted(options.model_fields)
    try:
        parameters = list(inspect.signature(build).parameters.values())[2:]
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(p.name for p in parameters if p.kind in named)
