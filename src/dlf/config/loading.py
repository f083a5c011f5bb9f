"""Reading a config: YAML parsed safely and bounded, ``--set`` overrides, and validation with
pydantic's first error turned into a one-line :class:`~dlf.errors.ConfigError`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dlf.config.secrets import redacted
from dlf.config.sections import RunConfig
from dlf.errors import ConfigError, first_line


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
    """The run config in the YAML file ``path``, with ``--set`` style ``overrides`` applied."""
    return validate(RunConfig, apply_overrides(load_raw(path), overrides))
