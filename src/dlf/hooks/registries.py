"""Named registries of data sets, models, losses, schedules and analyzers that plugins extend."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel

from dlf.errors import ConfigError
from dlf.hooks.analyzer import Analyzer
from dlf.numerics.data import Dataset
from dlf.numerics.losses import Loss
from dlf.numerics.objective import EnsembleModel
from dlf.numerics.schedules import Schedule

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """A name → object table that remembers which plugin added each entry."""

    kind: str
    broken: dict[str, str] = field(default_factory=dict)  # plugins that failed to load → why
    _entries: dict[str, T] = field(default_factory=dict)
    _sources: dict[str, str] = field(default_factory=dict)

    current_source: str = ""

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` as ``name``; the plugin being asked is remembered as its source."""
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} registered twice "
                f"({self._sources[name]} and {self.current_source})"
            )
        self._entries[name] = obj
        self._sources[name] = self.current_source

    def get(self, name: str, field_path: str) -> T:
        """The entry ``name``; if absent, a ConfigError naming ``field_path`` and the choices
        (and, where an installed plugin failed to load, which one and why)."""
        try:
            return self._entries[name]
        except KeyError:
            allowed = ", ".join(sorted(self._entries)) or "(none installed)"
            message = f"unknown {self.kind} {name!r}; allowed: {allowed}"
            if name in self.broken:
                message = f"{self.kind} {name!r} is not available: plugin {self.broken[name]}"
            elif self.broken:
                message += f" (plugins that failed to load: {', '.join(sorted(self.broken))})"
            raise ConfigError(field_path, message) from None

    def withdraw(self, source: str) -> None:
        """Remove every entry ``source`` added (its registration failed half-way)."""
        for name in [n for n, s in self._sources.items() if s == source]:
            del self._entries[name], self._sources[name]

    def source(self, name: str) -> str:
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: the factory ``build(options) -> Dataset``, its options model,
    and (optional) ``sizes(options)``: what it would hold, known before it is built, so that
    the memory a run needs is estimated before the data is allocated.

    The fields are in :class:`ModelEntry`'s order (``build``, ``options``); the former order
    ``DatasetEntry(options, build)`` still works, with a ``DeprecationWarning``."""

    build: Callable[[Any], Dataset]
    options: type[BaseModel]
    sizes: Callable[[Any], DataSizes] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.build, type) and issubclass(self.build, BaseModel):
            warnings.warn(
                "DatasetEntry(options, build) is the former order: write "
                "DatasetEntry(build, options), as ModelEntry(build, options)",
                DeprecationWarning,
                stacklevel=3,
            )
            options, build = self.build, self.options
            object.__setattr__(self, "build", build)
            object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class DataSizes:
    """Samples, features and classes a data set would have, and the option fields that set
    the samples and the classes (an error about their size names them)."""

    n_train: int
    n_val: int
    n_features: int
    n_classes: int
    samples_field: str
    classes_field: str


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``build(input_shape, n_classes, **options)`` and the pydantic model
    that ``model.options`` is validated with (None: the options go to ``build`` as given).

    ``build`` returns a ``torch.nn.Module`` (one member, trained as an ensemble through
    ``torch.func``) or an ensemble model over the flat θ itself, as the built-in ``mlp``.
    ``width`` names the option that sizes it (myrtle5: ``channels``), the one a min-width
    study ladders over (None: the model declares none; a study must name one).
    """

    build: Callable[..., torch.nn.Module | EnsembleModel]
    options: type[BaseModel] | None = None
    width: str | None = None


@dataclass
class Registries:
    """The registries handed to every ``dlf_register`` implementation."""

    datasets: Registry[DatasetEntry] = field(default_factory=lambda: Registry("dataset"))
    models: Registry[ModelEntry] = field(default_factory=lambda: Registry("model"))
    losses: Registry[Loss] = field(default_factory=lambda: Registry("loss"))
    schedules: Registry[Schedule] = field(default_factory=lambda: Registry("schedule"))
    analyzers: Registry[type[Analyzer[Any]]] = field(default_factory=lambda: Registry("analyzer"))
    broken: dict[str, str] = field(default_factory=dict)  # shared by all registries

    def __post_init__(self) -> None:
        for _, registry in self.items():
            registry.broken = self.broken

    def asked_by(self, plugin_name: str) -> None:
        """Attribute the next ``add`` calls to ``plugin_name`` (set by the plugin manager)."""
        for _, registry in self.items():
            registry.current_source = plugin_name

    def withdraw(self, plugin_name: str) -> None:
        """Take back what ``plugin_name`` registered."""
        for _, registry in self.items():
            registry.withdraw(plugin_name)

    def items(self) -> Iterator[tuple[str, Registry[Any]]]:
        yield from (
            ("datasets", self.datasets),
            ("models", self.models),
            ("losses", self.losses),
            ("schedules", self.schedules),
            ("analyzers", self.analyzers),
        )
