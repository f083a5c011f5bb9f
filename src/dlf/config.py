"""Validated run configuration: the YAML file's sections as pydantic models.

Every model forbids unknown keys, so a typo is an error naming the key and the keys allowed.
Sections whose options depend on a plugin (``data`` beyond ``name``, each entry of
``analyzers``) are validated again against the plugin's own options model when the run is built.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlf.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class DataConfig(BaseModel):
    """``data``: a registered data set by ``name``; other keys are that data set's options."""

    model_config = ConfigDict(extra="allow")
    name: str = "spiral"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Section):
    """``model``: an MLP of ``depth`` hidden layers of ``width`` units."""

    width: int = Field(100, ge=1, description="units per hidden layer")
    depth: int = Field(1, ge=1, description="number of hidden layers")
    activation: Literal["relu", "tanh"] = "relu"
    init: Literal["standard", "glorot"] = Field(
        "standard",
        description="standard: N(0, 1/fan_in), b=0; glorot: Glorot normal, b~N(0, 0.01²)",
    )
    dtype: Literal["float32", "float64"] = "float64"
    device: str = Field("cpu", description="cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "cpu" and not (value == "cuda" or value.startswith("cuda:")):
            raise ValueError("must be cpu, cuda or cuda:N")
        return value


class LossConfig(Section):
    """``loss``: ce, mse (static) or dce, dmse1, dmse2 (dynamical), or a plugin's loss."""

    name: str = "dce"


class ScheduleConfig(Section):
    """``schedule``: Γ_i(t). A list for amplitude or period makes each value ensemble members."""

    name: str = "triangle"
    amplitude: list[float] = Field([10.0], description="A ≥ 1 (A = 1 is the static loss)")
    period: list[float] = Field([100.0], description="T > 0 in steps")
    static_last_period: bool = Field(True, description="Γ = 1 for the last period (the papers)")
    static_from: int | None = Field(None, ge=0, description="Γ = 1 from this step on (overrides)")

    @field_validator("amplitude", "period", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> list[Any]:
        return _as_list(value)

    def first_static_step(self, period: float, steps: int) -> float:
        """The step from which Γ ≡ 1 for a member of period ``period`` in a run of ``steps``
        (``steps``: never static). The trainer and the search's pruner both ask this."""
        if self.static_from is not None:
            return float(min(self.static_from, steps))
        return max(steps - period, 0.0) if self.static_last_period else float(steps)

    @field_validator("amplitude")
    @classmethod
    def _amplitude(cls, value: list[float]) -> list[float]:
        if not value or any(a < 1 for a in value):
            raise ValueError("every amplitude must be >= 1")
        return value

    @field_validator("period")
    @classmethod
    def _period(cls, value: list[float]) -> list[float]:
        if not value or any(t <= 0 for t in value):
            raise ValueError("every period must be > 0")
        return value


class TrainConfig(Section):
    """``train``: full-batch gradient descent by default; minibatch SGD with momentum optional."""

    steps: int = Field(2000, ge=1)
    lr: list[float] = Field([1.0], description="learning rate η; a list makes members")
    seeds: list[int] = Field([0], description="an int n means seeds 0..n-1; or a list")
    optimizer: Literal["gd", "sgd"] = Field("gd", description="gd: full batch; sgd: minibatches")
    batch_size: int | None = Field(None, ge=1, description="minibatch size for sgd")
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    warmup_steps: int = Field(0, ge=0, description="linear warm-up of η from 0")
    decay: Literal["none", "linear"] = Field(
        "none", description="linear: η decays to final_lr_factor·η"
    )
    final_lr_factor: float = Field(0.0, ge=0, le=1)
    eval_every: int = Field(100, ge=1, description="validation cadence in steps")
    record_every: int = Field(1, ge=1, description="record losses/accuracy every n steps")
    diverge_above: float | None = Field(
        1e6, gt=0, description="a member whose F exceeds this (or is NaN/inf) is marked diverged"
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_list(cls, value: Any) -> list[Any]:
        return _as_list(value)

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("every learning rate must be > 0")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> list[Any]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("an integer number of seeds must be >= 1")
            return list(range(value))
        return _as_list(value)

    @model_validator(mode="after")
    def _sgd_needs_batch(self) -> TrainConfig:
        if self.optimizer == "sgd" and self.batch_size is None:
            raise ValueError("optimizer sgd needs batch_size")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class OutputConfig(Section):
    """``output``: where the trace goes and how often it is checkpointed."""

    root: Path = Field(Path("studies"), description="each run writes under root/<name>/")
    checkpoint_seconds: float = Field(60.0, gt=0, description="rewrite the trace this often")
    progress: Literal["auto", "always", "never"] = Field("auto", description="auto: on a terminal")


class RunConfig(Section):
    """A whole run (or, with ``search``, a study): the YAML file's top level."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="names studies/<name>/")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    analyzers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="analyzer name → its options"
    )
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules to load")
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("analyzers", mode="before")
    @classmethod
    def _analyzers(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


class Member(BaseModel):
    """One ensemble member: a seed and its point in hyper-parameter space."""

    model_config = ConfigDict(frozen=True)
    seed: int
    amplitude: float
    period: float
    lr: float


def members_of(config: RunConfig) -> list[Member]:
    """The product amplitude × period × lr × seeds, seeds varying fastest."""
    grid = itertools.product(
        config.schedule.amplitude, config.schedule.period, config.train.lr, config.train.seeds
    )
    return [Member(seed=s, amplitude=a, period=t, lr=lr) for a, t, lr, s in grid]


# --- loading -----------------------------------------------------------------------------------


def _describe(error: dict[str, Any], model: type[BaseModel]) -> ConfigError:
    loc = [str(p) for p in error["loc"]]
    field = ".".join(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return ConfigError(field, f"unknown key; allowed: {', '.join(allowed)}")
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] != "missing" and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return ConfigError(field, message)


def _allowed_keys(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    current: Any = model
    for part in path:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
    return sorted(getattr(current, "model_fields", {}))


def validate(model: type[BaseModel], raw: Any, prefix: str = "") -> Any:
    """``model.model_validate(raw)``, turning the first error into a one-line ConfigError."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = _describe(dict(exc.errors()[0]), model)
        field = ".".join(p for p in (prefix, err.field) if p)
        raise ConfigError(field, err.message) from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(key, f"{part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return raw


def load_raw(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections")
    return raw


def load_config(path: Path, overrides: Sequence[str] = ()) -> RunConfig:
    return validate(RunConfig, apply_overrides(load_raw(path), overrides))
