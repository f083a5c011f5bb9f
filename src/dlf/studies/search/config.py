"""The ``search`` section of a study config, and loading a study config from YAML.

A study config is a run config (every section but the model's width option, ``model.width`` for
the MLP, and ``schedule.amplitude``, ``schedule.period`` and ``train.seeds``, which the search
owns) plus a ``search`` section. The
``search`` section is popped before the rest is validated as a :class:`dlf.RunConfig`, so the core
config needs no knowledge of studies.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dlf.config import (
    RunConfig,
    Section,
    Seed,
    apply_overrides,
    load_raw,
    validate,
)
from dlf.errors import ConfigError
from dlf.studies.search.knob import WidthKnob, width_knob

# Confirmation seed k is seed_offset + CONFIRM_BASE + k; search seeds lie below CONFIRM_BASE.
CONFIRM_BASE = 10_000


class LogRange(Section):
    """A closed range searched on a log scale; ``low == high`` fixes the value."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.high < self.low:
            raise ValueError(f"empty or inverted range: high ({self.high:g}) < low ({self.low:g})")
        return self


class AmplitudeRange(LogRange):
    """Amplitudes A of the Γ oscillation; A ≥ 1 (A = 1 is the static loss)."""

    low: float = Field(2.0, ge=1)
    high: float = Field(50.0, ge=1)


class PeriodRange(LogRange):
    """Periods T of the Γ oscillation, in steps."""

    low: float = Field(20.0, gt=0)
    high: float = Field(500.0, gt=0)


class WidthLadder(Section):
    """Widths tried: geometric from ``low`` to ``high``, ``per_octave`` rungs per doubling, set
    as the model option ``option`` (see :mod:`~dlf.studies.search.knob`)."""

    low: int = Field(2, ge=1)
    high: int = Field(64, ge=1)
    per_octave: int = Field(2, ge=1, le=16)
    option: str | None = Field(
        None,
        description="the model option the ladder sets; default: the model's own (mlp: "
        "model.width, myrtle5: channels); a module:factory model names its keyword here",
    )

    @model_validator(mode="after")
    def _ordered(self) -> WidthLadder:
        if self.high < self.low:
            raise ValueError(f"empty or inverted range: high ({self.high}) < low ({self.low})")
        return self

    def ladder(self) -> list[int]:
        """The rungs: ``round(low · 2^(k/per_octave))`` up to ``high``, without repeats."""
        n = math.floor(self.per_octave * math.log2(self.high / self.low) + 1e-9)
        rungs = {round(self.low * 2 ** (k / self.per_octave)) for k in range(n + 1)}
        return sorted(rungs | {self.low, self.high})


class SamplerConfig(Section):
    """How (A, T) are proposed after ``search.points``.

    ``sobol`` (default): the same scrambled Sobol sequence at every width, so trial k of a width
    tries the same (A, T) whatever the number of workers or the order trials finish in, and
    the answer does not depend on ``--workers``. ``tpe`` and ``random`` ask Optuna's samplers,
    which learn from (or draw independently of) the trials finished so far: adaptive, but the
    proposals then depend on completion order.
    """

    name: Literal["sobol", "tpe", "random"] = "sobol"
    seed: Seed = Field(0, description="seed of the Sobol scrambling or of Optuna's sampler")
    startup_trials: int = Field(8, ge=0, description="TPE: random trials before modelling")


class Point(Section):
    """One (A, T) tried at every width before the sampler's proposals."""

    amplitude: float = Field(ge=1)
    period: float = Field(gt=0)


class PrunerConfig(Section):
    """When a trial is decided before its last step (see :mod:`dlf.studies.search.pruning`)."""

    name: Literal["target", "median", "none"] = Field(
        "target", description="target: can the trial still reach (or has it surely reached) it"
    )
    startup_trials: int = Field(
        4, ge=1, description="full-length trials before anything is decided"
    )
    margin: float = Field(0.05, ge=0, le=1, description="safety margin on the accuracy")
    settle_steps: int = Field(
        200, ge=0, description="steps of static Γ before an evaluation of a dynamical trial counts"
    )


class SearchConfig(Section):
    """``search``: the smallest width at which a dynamical loss reaches ``target``."""

    target: float = Field(gt=0, le=1, description="mean over seeds of the final metric to reach")
    metric: Literal["val_accuracy", "eval_train_accuracy"] = "val_accuracy"
    seeds: list[int] = Field(
        [0, 1, 2, 3],
        description="seeds of every search trial (before seed_offset); an int n: 0..n-1",
    )
    seed_offset: int = Field(
        0,
        ge=0,
        lt=2**62,
        description="added to every seed, search and confirmation: another seed set",
    )
    confirm_seeds: int = Field(
        20, ge=2, description="fresh seeds of a rung's first confirmation round"
    )
    confirm_step: int = Field(20, ge=1, description="fresh seeds added per further round")
    confirm_max: int = Field(
        80, ge=2, le=CONFIRM_BASE, description="most fresh seeds a rung's confirmation uses"
    )
    confirm_level: float = Field(
        0.9, gt=0.5, lt=1, description="one-sided confidence of a verdict, over all its rounds"
    )
    width: WidthLadder = Field(default_factory=WidthLadder)
    amplitude: AmplitudeRange = Field(default_factory=AmplitudeRange)
    period: PeriodRange = Field(default_factory=PeriodRange)
    points: list[Point] | None = Field(
        None,
        description="(A, T) tried first at every width; default: the papers' A = 10, T = 100 "
        "where it lies in the searched box",
    )
    static_baseline: bool = Field(True, description="also find the static loss's minimal width")
    trials_per_width: int = Field(8, ge=1, description="(A, T) trials before a width is given up")
    batch: int = Field(4, ge=1, description="trials evaluated together in one ensemble run")
    trials: int = Field(64, ge=1, description="budget of dynamical-loss trials")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: str | None = Field(
        None,
        description="None: DLF_STORAGE_URL if set, else a journal file in the study folder; "
        "a path; or an RDB URL (its password is shown and stored as ***)",
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="how often running trials say alive")
    grace_seconds: float = Field(60.0, gt=0, description="silence after which a trial is retried")
    scale: str = Field("default", description="a preset from ``scales`` applied to the config")
    scales: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name → dotted overrides, e.g. {paper: {train.steps: 35000}}",
    )

    def trial_seeds(self) -> list[int]:
        """The seeds search trials train with: ``seeds`` shifted by ``seed_offset``."""
        return [s + self.seed_offset for s in self.seeds]

    def confirm_seed(self, k: int) -> int:
        """The k-th fresh seed of confirmation rounds; disjoint from the search seeds."""
        return self.seed_offset + CONFIRM_BASE + k

    def trials_at_width(self, kind: str) -> int:
        """Trials a width gets before it counts as out of reach (the static loss has one)."""
        return self.trials_per_width if kind == "dynamical" else 1

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("an integer number of seeds must be >= 1")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        if min(value) < 0 or max(value) >= CONFIRM_BASE:
            raise ValueError(
                f"seeds must lie in [0, {CONFIRM_BASE}); confirmation seeds start at "
                f"{CONFIRM_BASE} (use seed_offset for another seed set)"
            )
        return value

    @model_validator(mode="after")
    def _confirm_rounds(self) -> SearchConfig:
        if self.confirm_max < self.confirm_seeds:
            raise ValueError(
                f"confirm_max ({self.confirm_max}) must be at least confirm_seeds "
                f"({self.confirm_seeds})"
            )
        return self

    @model_validator(mode="after")
    def _points_in_box(self) -> SearchConfig:
        if self.points is None:
            papers = Point(amplitude=10.0, period=100.0)
            inside = self.amplitude.low <= 10 <= self.amplitude.high
            inside = inside and self.period.low <= 100 <= self.period.high
            self.points = [papers] if inside else []
        for i, point in enumerate(self.points):
            a, t = point.amplitude, point.period
            if not (self.amplitude.low <= a <= self.amplitude.high):
                raise ValueError(f"points[{i}].amplitude {a:g} lies outside search.amplitude")
            if not (self.period.low <= t <= self.period.high):
                raise ValueError(f"points[{i}].period {t:g} lies outside search.period")
        return self

    @model_validator(mode="after")
    def _batch_fits(self) -> SearchConfig:
        if self.batch > self.trials_per_width:
            raise ValueError(
                f"batch ({self.batch}) must not exceed trials_per_width ({self.trials_per_width})"
            )
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("grace_seconds must exceed heartbeat_seconds")
        return self


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: the run every trial shares, the search over it, and the model
    option its width ladder sets."""

    run: RunConfig
    search: SearchConfig
    knob: WidthKnob

    @property
    def name(self) -> str:
        return self.run.name

    def with_root(self, root: Path) -> StudyConfig:
        output = self.run.output.model_copy(update={"root": Path(root)})
        return StudyConfig(self.run.model_copy(update={"output": output}), self.search, self.knob)

    def at_width(self, run: RunConfig, width: int) -> RunConfig:
        """``run`` (this study's, or one track's) with the width knob set to ``width``."""
        return self.knob.apply(run, width)


# Keys of the run config that the search sets for every trial (and the model's width option,
# :func:`owned_keys`); a config must leave them out.
TRIAL_OWNED: dict[tuple[str, ...], str] = {
    ("schedule", "amplitude"): "search.amplitude",
    ("schedule", "period"): "search.period",
    ("train", "seeds"): "search.seeds",
}


def owned_keys(knob: WidthKnob) -> dict[tuple[str, ...], str]:
    """Every key the search sets (as a path into the config) and the search field to use."""
    return {tuple(knob.field.split(".")): "search.width", **TRIAL_OWNED}


def load_study_config(path: Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML, apply ``search.scale`` then ``--set`` overrides, and validate it."""
    raw = apply_overrides(load_raw(Path(path)), overrides)
    return study_config_from_raw(raw, overrides)


def study_config_from_raw(raw: dict[str, Any], overrides: Sequence[str] = ()) -> StudyConfig:
    """Validate a raw mapping (``overrides`` already applied) as a study config."""
    raw = copy.deepcopy(raw)
    section = raw.get("search")
    if not isinstance(section, dict):
        raise ConfigError("search", "a study needs a `search` mapping (at least `target`)")
    scale = section.get("scale", "default")
    if scale != "default":
        presets = section.get("scales") or {}
        if scale not in presets:
            allowed = ", ".join(["default", *sorted(presets)])
            raise ConfigError("search.scale", f"unknown scale {scale!r}; allowed: {allowed}")
        preset = [f"{key}={_yaml_scalar(value)}" for key, value in presets[scale].items()]
        raw = apply_overrides(raw, [*preset, *overrides])
    search = validate(SearchConfig, raw.pop("search"), prefix="search")
    run = validate(RunConfig, raw)
    knob = width_knob(run, search.width.option)
    for path, owner in owned_keys(knob).items():
        if _lookup(raw, path) is not None:
            raise ConfigError(".".join(path), f"set by the search; use {owner} instead")
    if len(run.train.lr) != 1:
        raise ConfigError("train.lr", "a study uses one learning rate; give a single value")
    if search.period.high >= run.train.steps:
        raise ConfigError(
            "search.period.high",
            f"must be below train.steps ({run.train.steps}) so that Γ oscillates before the "
            "static last period",
        )
    return StudyConfig(run, search, knob)


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    """``tree[path[0]][path[1]]…``, or None where a level is missing."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _yaml_scalar(value: Any) -> str:
    """A value written so that ``apply_overrides`` parses it back (it reads YAML)."""
    return json.dumps(value)


def setup_fingerprint(config: StudyConfig) -> dict[str, Any]:
    """What a trial's measurement depends on, as flat dotted keys: two studies may share trials
    only if these agree. Budgets, sampler, pruner, storage and output settings may change."""
    run = config.run.model_dump(mode="json", exclude={"name", "output"})
    for *parents, key in (("model", "width"), *owned_keys(config.knob)):
        _lookup(run, tuple(parents)).pop(key, None)
    search = config.search.model_dump(
        mode="json", include={"target", "metric", "amplitude", "period"}
    )
    search["seeds"] = config.search.trial_seeds()  # seed_offset 0 keeps older studies' keys
    if config.search.seed_offset:
        search["seed_offset"] = config.search.seed_offset  # it shifts the confirmation seeds
    search["width"] = config.search.width.ladder()
    if not config.knob.is_mlp_width:  # older (MLP) studies keep their keys
        search["width_option"] = config.knob.field
    return _flatten({**run, "search": search})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
