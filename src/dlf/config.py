"""Validated run configuration: the YAML file's sections as pydantic models.

Every model forbids unknown keys, so a typo is an error naming the key and the keys allowed.
Sections whose options depend on a plugin (``data`` beyond ``name``, each entry of
``analyzers``) are validated again against the plugin's own options model when the run is built.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dlf.errors import ConfigError, first_line


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


# --- secrets ---------------------------------------------------------------------------------

#: Query parameters of a URL whose values are secrets (libpq's sslpassword, tokens, keys).
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every secret part as ``***``: the password of ``user:password@host`` (found
    by parsing, so an unencoded '@' or '/' in it is still all hidden) and the value of each
    query parameter named like a secret. Text without ``://`` is returned as it is."""
    return _split_secrets(url)[0]


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` that :func:`redact_url` hides, longest first (to scrub them
    from messages that quote them, e.g. a database driver's)."""
    return sorted(_split_secrets(url)[1], key=len, reverse=True)


def with_encoded_password(url: str) -> str:
    """``url`` with the characters of its password that end a URL's parts ('@', '/', '?', '#',
    ':') percent-encoded: a database driver would otherwise split ``user:T@pw@host`` at the
    first '@' (and quote the rest of the password as a host name)."""
    scheme, sep, rest = url.partition("://")
    userinfo = _userinfo(rest) if sep else None
    if userinfo is None:
        return url
    user, colon, password, after = userinfo
    encoded = "".join(quote(c, safe="") if c in "@/?#:" else c for c in password)
    return f"{scheme}://{user}{colon}{encoded}{after}"


def _userinfo(rest: str) -> tuple[str, str, str, str] | None:
    """``user``, ``:``, ``password`` and the rest from ``@host`` on, of a URL after its
    ``scheme://``; None without '@'. The user part ends at the last '@' before the query (a
    password may hold '@' and '/'; a database path hardly ever holds '@')."""
    ends = [i for i in (rest.find(c) for c in "?#") if i >= 0]
    last_at = rest.rfind("@", 0, min(ends, default=len(rest)))
    if last_at < 0:
        last_at = rest.rfind("@")  # a '?' or '#' in the password itself
    if last_at < 0:
        return None
    user, colon, password = rest[:last_at].partition(":")
    return user, colon, password, rest[last_at:]


def _split_secrets(url: str) -> tuple[str, list[str]]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, []
    secrets = []
    userinfo = _userinfo(rest)
    if userinfo is not None:
        user, colon, password, after = userinfo
        secrets.append(password)
        rest = f"{user}{':***' if colon else ''}{after}"
    base, question, query = rest.partition("?")
    if question:
        parts = []
        for item in query.split("&"):
            key, equals, value = item.partition("=")
            if equals and SECRET_PARAMETER.search(key):
                secrets.append(value)
                item = f"{key}=***"
            parts.append(item)
        rest = f"{base}?{'&'.join(parts)}"
    return f"{scheme}://{rest}", [s for s in secrets if s]


def redacted(value: Any) -> Any:
    """``value`` with :func:`redact_url` applied to every string in it (lists, mappings)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, list | tuple):
        return type(value)(redacted(v) for v in value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    return value


# --- loading -----------------------------------------------------------------------------------


def _describe(error: dict[str, Any], model: type[BaseModel]) -> ConfigError:
    loc = [str(p) for p in error["loc"]]
    field = ".".join(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return ConfigError(field, f"unknown key; allowed: {', '.join(allowed)}")
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] != "missing" and not isinstance(error["input"], dict):
        message += f" (got {redacted(error['input'])!r})"
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


MAX_CONFIG_BYTES = 1 << 20  # a config file (or one --set value) larger than 1 MiB is refused
MAX_CONFIG_NODES = 100_000  # YAML nodes after expanding aliases: bounds an alias bomb


def _duplicate_key(root: yaml.Node) -> tuple[str, int] | None:
    """The dotted path and line of the first key given twice in one mapping (YAML itself
    silently keeps the last value), or None."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen_nodes: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}.{i}".lstrip(".")) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, child in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                dotted = f"{path}.{key.value}".lstrip(".")
                if key.value in keys and key.value != "<<":
                    return dotted, key.start_mark.line + 1
                keys.add(key.value)
                stack.append((child, dotted))
    return None


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML with the safe loader, refusing documents that are too large or that expand
    (through aliases) to more than MAX_CONFIG_NODES nodes, before anything is constructed."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(where, f"is {len(text):,} characters; at most {MAX_CONFIG_BYTES:,}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        expanded = _expanded_size(node)
        if expanded > MAX_CONFIG_NODES:
            raise ConfigError(
                where,
                f"expands to {expanded:,} YAML nodes through aliases (at most "
                f"{MAX_CONFIG_NODES:,}); write the values out instead of nesting aliases",
            )
        duplicate = _duplicate_key(node)
        if duplicate is not None:
            raise ConfigError(duplicate[0], f"given twice (line {duplicate[1]}); keep one")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"not valid YAML: {first_line(exc, typed=False)}") from None
    except RecursionError:
        raise ConfigError(where, "nested too deeply") from None


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, counted without expanding: a node
    reached through k aliases counts k times (memoised, so linear in the composed graph)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[key] = 1
            continue
        if children_done:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            sizes[key] = min(total, MAX_CONFIG_NODES + 1)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise ConfigError(
                "--set", f"expected key=value (key dotted: train.steps=500), got {item!r}"
            )
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(key, f"{part!r} is not a section")
            node = child
        node[parts[-1]] = parse_yaml(text, f"--set {key}")
    return raw


def load_raw(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (bounded in size and alias expansion)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError("", f"{path} is a folder, not a config file")
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes; not a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"{path} is not UTF-8 text (byte {exc.start}); is it a config file?"
        ) from None
    if "\x00" in text:
        raise ConfigError("", f"{path} holds NUL bytes; is it a config file?")
    raw = parse_yaml(text, str(path))
    if raw is None:  # an empty file would silently run every default: surely a mistake
        raise ConfigError("", f"{path} is empty (or only comments); not a config")
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections")
    if not all(isinstance(k, str) for k in raw):
        raise ConfigError("", f"{path}: section names must be strings")
    return raw


def load_config(path: Path, overrides: Sequence[str] = ()) -> RunConfig:
    return validate(RunConfig, apply_overrides(load_raw(path), overrides))
