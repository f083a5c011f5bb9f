"""The YAML file's sections as pydantic models, and the ensemble members they describe.

Every model forbids unknown keys, so a typo is an error naming the key and the keys allowed.
Sections whose options depend on a plugin (``data`` beyond ``name``, each entry of
``analyzers``) are validated again against the plugin's own options model when the run is built.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    """The base of every config section (run and search): unknown keys and NaN/±∞ refused."""

    # NaN and ±∞ are refused for every float field: a NaN learning rate or period would train
    # (NaN compares False to every bound) and an infinite range breaks the search afterwards
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``width: true`` is not the number 1: a boolean is refused where no bool is allowed."""
        annotation = str(cls.model_fields[info.field_name or ""].annotation)
        if "bool" in annotation or not ("int" in annotation or "float" in annotation):
            return value
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values):
            raise ValueError("must be a number, not true or false")
        return value


#: A random seed: numpy, torch and Optuna all take 0 ≤ seed < 2⁶³ (torch refuses larger ones).
Seed = Annotated[int, Field(ge=0, lt=2**63)]


def seeds_in_range(seeds: list[int]) -> list[int]:
    """``seeds`` if each is a :data:`Seed`; else ValueError naming the first that is not."""
    wrong = [s for s in seeds if not 0 <= s < 2**63]
    if wrong:
        raise ValueError(f"every seed must be >= 0 and < 2**63 (got {wrong[0]})")
    return seeds


MAX_NAME = 100  # characters of a run name: one directory component, well below NAME_MAX
MAX_SEEDS = 1_000_000


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class DataConfig(BaseModel):
    """``data``: a registered data set by ``name``; other keys are that data set's options."""

    model_config = ConfigDict(extra="allow")
    name: str = "spiral"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


MLP_FIELDS = ("width", "depth", "activation", "init")


class ModelConfig(Section):
    """``model``: the built-in MLP, or a registered or importable ``torch.nn.Module`` factory.

    ``mlp`` has ``depth`` hidden layers of ``width`` units; any other model (``myrtle5``, a
    plugin's, ``module.path:factory``) takes its keyword arguments from ``options``."""

    name: str = Field(
        "mlp",
        description="mlp, a registered model (myrtle5, a plugin's) or module.path:factory "
        "(imported and called: a config that names code runs it; trust its source)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of a model other than mlp"
    )
    width: int = Field(100, ge=1, description="units per hidden layer")
    depth: int = Field(1, ge=1, description="number of hidden layers")
    activation: Literal["relu", "tanh"] = "relu"
    init: Literal["standard", "glorot"] = Field(
        "standard",
        description="standard: N(0, 1/fan_in), b=0; glorot: Glorot normal, b~N(0, 0.01²)",
    )
    ensemble: Literal["auto", "vmap", "loop"] = Field(
        "auto",
        description="how a module model's members run: vmap (one batched call), loop (one call "
        "per member), auto (loop for a convolutional module on a CPU, else vmap)",
    )
    dtype: Literal["float32", "float64"] = "float64"
    device: str = Field("cpu", description="cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "cpu" and not (value == "cuda" or value.startswith("cuda:")):
            raise ValueError("must be cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _options_of_the_model(self) -> ModelConfig:
        if self.name == "mlp" and self.options:
            raise ValueError("mlp takes model.width, depth, activation and init, not options")
        if self.name == "mlp" and self.ensemble != "auto":
            raise ValueError("ensemble applies to module models; mlp is one batched network")
        given = [f for f in MLP_FIELDS if f in self.model_fields_set]
        if self.name != "mlp" and given:
            raise ValueError(
                f"{given[0]} applies to model mlp only; give {self.name}'s settings as options"
            )
        return self


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
    momentum: float = Field(0.0, ge=0, lt=1, description="β of heavy-ball momentum")
    nesterov: bool = False
    curvature_batch: int | None = Field(
        None,
        ge=1,
        description="curvature analyzers measure on this many fixed training samples (null: all)",
    )
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
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("an integer number of seeds must be >= 1")
            if value > MAX_SEEDS:
                raise ValueError(f"at most {MAX_SEEDS:,} seeds fit in one run")
            return list(range(value))
        return _as_list(value)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one seed (an integer n means seeds 0..n-1)")
        return seeds_in_range(value)

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

    @field_validator("root", mode="before")
    @classmethod
    def _root(cls, value: Any) -> Any:
        """``~`` is the home folder, as in a shell; a NUL byte can name no folder."""
        if isinstance(value, str | Path):
            if "\x00" in str(value):
                raise ValueError("a folder name cannot hold a NUL byte")
            return Path(value).expanduser()
        return value

    def wants_progress(self) -> bool:
        """Whether to draw a progress bar: ``always``, or ``auto`` when stderr is a terminal."""
        return self.progress == "always" or (self.progress == "auto" and sys.stderr.isatty())


class RunConfig(Section):
    """A whole run (or, with ``search``, a study): the YAML file's top level."""

    name: str = Field("run", description="names studies/<name>/: one safe path component")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    analyzers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="analyzer name → its options"
    )
    plugins: list[str] = Field(
        default_factory=list, description="extra plugin modules to import (code: trust them)"
    )
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return safe_component(value)

    @field_validator("analyzers", mode="before")
    @classmethod
    def _analyzers(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def safe_component(value: str) -> str:
    """``value`` if it is one safe path component (a directory name): letters, digits, '_',
    '.', '-', not starting with '.' or '-' (so never '.' or '..'), at most MAX_NAME long."""
    if not NAME_PATTERN.fullmatch(value):  # fullmatch: "$" would let a final newline by
        raise ValueError(
            "must be one folder name: letters, digits, '_', '.', '-', not starting with '.' or '-'"
        )
    if len(value) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters (got {len(value)})")
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
