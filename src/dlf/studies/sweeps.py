"""Sweeps: one run per point of a grid of per-run settings (width, loss, steps…), each an ensemble.

Members (seeds, amplitudes, periods, learning rates) already batch inside one run; what cannot
be batched — the network width, the loss, the number of steps — is swept here. A sweep file is a
run config with one or both of two extra top-level sections:

- ``sweep``: nested like the config, with lists as leaves; the product of the leaves is the grid
  (``sweep: {model: {width: [10, 20, 50]}}``).
- ``variants``: name → nested overrides (``variants: {dce: {loss: {name: dce}}}``); every variant
  is crossed with the grid.

``dlf-study run`` recognises a sweep file by these sections. Point ``label`` writes
``<output.root>/<name>/<label>/trace.nc``. Every point is validated before anything runs, and a
point whose trace is already complete for the same config is skipped, so running the command
again resumes the sweep.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlf.config import RunConfig, validate
from dlf.engine.resume import FINISHED, earlier_status
from dlf.engine.run import execute, prepare
from dlf.engine.trace import TRACE_NAME
from dlf.errors import ConfigError

SECTIONS = ("sweep", "variants")
LABEL = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: its label (directory name) and validated config."""

    label: str
    config: RunConfig

    def trace_path(self, root: Path) -> Path:
        return root / self.label / TRACE_NAME


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every non-mapping value of a nested mapping."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= leaves(value, f"{dotted}.")
        else:
            flat[dotted] = value
    return flat


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with the nested ``overrides`` applied (mappings merge)."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def _text(value: Any, exact: bool = False) -> str:
    """A value as a label shows it: floats to 6 digits, or ``exact`` (``repr``, every digit)."""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:g}"
    if isinstance(value, list):
        return ",".join(_text(v, exact) for v in value)
    return str(value)


def _labels(grid: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Each grid key's values as label text: 6 digits, or every digit where 6 would make two
    points share a folder (``lr: [0.1000001, 0.1000002]``); a value given twice is refused."""
    shown = {}
    for key, values in grid.items():
        for exact in (False, True):
            texts = [_text(v, exact) for v in values]
            if len(set(texts)) == len(texts):
                break
        else:
            twice = next(t for t in texts if texts.count(t) > 1)
            raise ConfigError(f"sweep.{key}", f"the value {twice} is given twice; give it once")
        shown[key] = texts
    return shown


def _grid(raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("sweep", "must be a mapping shaped like the config, with lists as leaves")
    grid = leaves(raw)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep.{key}", f"must be a non-empty list of values (got {values!r})"
            )
    return grid


def _variants(raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {"": {}}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("variants", "must map variant names to config overrides")
    for name, overrides in raw.items():
        if not LABEL.fullmatch(str(name)):
            raise ConfigError(f"variants.{name}", "name may use letters, digits, '_', '.', '-'")
        if not isinstance(overrides, dict):
            raise ConfigError(f"variants.{name}", "must be a mapping of config overrides")
    return {str(k): v for k, v in raw.items()}


def plan(raw: dict[str, Any]) -> list[SweepPoint]:
    """Every point of the sweep that ``raw`` (a parsed sweep file) describes, validated."""
    if not any(key in raw for key in SECTIONS):
        raise ConfigError("", "a sweep file needs a 'sweep' or a 'variants' section")
    base = {k: v for k, v in raw.items() if k not in SECTIONS}
    grid = _grid(raw.get("sweep"))
    variants = _variants(raw.get("variants"))
    texts = _labels(grid)
    points = []
    for variant, overrides in variants.items():
        for indices in itertools.product(*(range(len(v)) for v in grid.values())):
            config = merged(base, overrides)
            parts = [variant] if variant else []
            for key, i in zip(grid, indices, strict=True):
                config = merged(config, _nest(key, grid[key][i]))
                parts.append(f"{key.rsplit('.', 1)[-1]}-{texts[key][i]}")
            label = "_".join(parts)
            config["name"] = f"{base.get('name', 'sweep')}-{label}"
            where = f"variants.{variant}" if variant else "sweep"
            try:
                points.append(SweepPoint(label, validate(RunConfig, config)))
            except ConfigError as exc:
                raise ConfigError(exc.field, f"{exc.message} (in {where}, point {label})") from None
    return points


def run_points(points: Sequence[SweepPoint], root: Path, *, fresh: bool = False) -> list[Path]:
    """Run every point into ``<root>/<label>/trace.nc``, skipping points whose trace already
    holds their finished run (so a rerun resumes; ``fresh`` runs them all again); the traces'
    paths, in order. A trace of other settings at a point's path is refused before any runs."""
    paths = [point.trace_path(root) for point in points]
    earlier = []
    for point, path in zip(points, paths, strict=True):  # all checked before any is written
        prepare(point.config)
        earlier.append(None if fresh else earlier_status(path, point.config))
    for i, (point, path, status) in enumerate(zip(points, paths, earlier, strict=True), start=1):
        if status in FINISHED:
            print(f"[{i}/{len(points)}] {point.label}: already {status} in {path}")
        else:
            status = execute(point.config, trace_path=path, fresh=fresh).status
            print(f"[{i}/{len(points)}] {point.label}: {status}, trace written to {path}")
    return paths


def is_sweep(raw: dict[str, Any]) -> bool:
    """Whether a raw config mapping is a sweep: it has a ``sweep`` or ``variants`` section."""
    return any(key in raw for key in SECTIONS)


def cli_sweep(raw: dict[str, Any], out: Path | None, *, fresh: bool = False) -> int:
    """``dlf-study run`` for a sweep (``raw``: the file with ``--set`` applied): run every point,
    ``out`` replacing ``output.root``, skipping points already finished unless ``fresh``."""
    if out is not None:
        raw = merged(raw, {"output": {"root": str(out)}})
    points = plan(raw)
    run_points(points, points[0].config.output.root / str(raw.get("name", "sweep")), fresh=fresh)
    return 0
