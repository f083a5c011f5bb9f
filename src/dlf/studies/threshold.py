"""The threshold study: λmax at the onset of instabilities versus the learning rate (2024 Fig. 4).

The study trains, for each learning rate η, one ensemble of A × T × seeds members on the 2024
protocol rescaled to η (period T/η, total_steps/η steps), with the ``lanczos`` (adaptive
cadence: every step while η·λmax/2 is near 1) and ``bifurcation`` analyzers, resolves each
onset's crossing of 2/η to the step (replaying the members whose crossing the cadence bracketed
coarsely, :mod:`dlf.studies.replay`), then fits the onsets and summarises the ratios at crossing
and at visible onset per η as distributions with :mod:`dlf.analysis.threshold`.

A config file for the study is a run config (the part every η shares) with a ``threshold_study``
section, :class:`ThresholdStudySettings`. Results go to ``<root>/<name>/threshold.nc`` and
``threshold.png``; the traces to ``<root>/<name>/eta-<η>/trace.nc`` and their crossings to
``crossings.nc`` beside; a trace already complete for the same config, and crossings computed
from that trace, are reused, so running the study again resumes it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlf.analysis.crossing import find_crossings
from dlf.analysis.threshold import member_onsets, threshold_dataset
from dlf.config import load_raw, validate
from dlf.engine.trace import open_trace, write_netcdf
from dlf.errors import ConfigError
from dlf.plots.threshold import threshold as threshold_figure
from dlf.studies.replay import replay
from dlf.studies.sweeps import SweepPoint, plan, run_points

SECTION = "threshold_study"


class StudyScale(BaseModel):
    """How much of the protocol to run: learning rates, seeds, time and spectrum cadence."""

    model_config = ConfigDict(extra="forbid")
    lrs: list[float] = Field(min_length=2, description="learning rates η, one run each")
    seeds: int = Field(ge=1, description="seeds per (A, T) member")
    time_fraction: float = Field(
        gt=0, le=1, description="fraction of the protocol's total_steps/η that each run trains"
    )
    spectrum_every: int = Field(
        ge=1, description="lanczos cadence at η = 1; a run at η uses every/η made odd"
    )

    @field_validator("lrs")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or len(set(value)) != len(value):
            raise ValueError("learning rates must be positive and distinct")
        return value


class ThresholdStudySettings(BaseModel):
    """The ``threshold_study`` section: the 2024 Fig. 4 protocol and the scale it runs at."""

    model_config = ConfigDict(extra="forbid")
    scale: Literal["reduced", "paper"] = Field(
        "reduced", description="reduced: minutes on a laptop CPU; paper: the full protocol"
    )
    amplitudes: list[float] = Field([25, 50, 75], min_length=1, description="A of the members")
    periods: list[float] = Field(
        [5000, 10000], min_length=1, description="T at η = 1; a run at η uses T/η"
    )
    total_steps: int = Field(100_000, ge=1, description="steps at η = 1; a run at η trains it/η")
    onset: Literal["first", "mean"] = Field(
        "first", description="λ per member: at its first instability (2024) or mean over all"
    )
    replay: bool = Field(
        True, description="replay members whose crossing of 2/η the cadence did not resolve"
    )
    reduced: StudyScale = StudyScale(
        lrs=[0.5, 1.0, 2.0, 4.0], seeds=1, time_fraction=0.3, spectrum_every=25
    )
    paper: StudyScale = StudyScale(
        lrs=[0.25, 0.5, 1.0, 2.0, 4.0], seeds=30, time_fraction=1.0, spectrum_every=25
    )

    @property
    def chosen(self) -> StudyScale:
        return self.paper if self.scale == "paper" else self.reduced


def odd_cadence(every: float) -> int:
    """The odd number of steps nearest above ``every``: samples then alternate between even and
    odd steps, so λ at an onset sees both walls of the bounce (see dlf.analysis.bifurcation)."""
    return 2 * int(every // 2) + 1


def study_points(raw: dict[str, Any]) -> tuple[ThresholdStudySettings, list[SweepPoint]]:
    """The study's settings and one validated run per learning rate, from a raw config mapping."""
    raw = copy.deepcopy(raw)
    settings = validate(ThresholdStudySettings, raw.pop(SECTION, None) or {}, prefix=SECTION)
    scale = settings.chosen
    analyzers = dict(raw.get("analyzers") or {})
    for name in ("lanczos", "bifurcation"):
        analyzers[name] = dict(analyzers.get(name) or {})
    variants = {}
    for eta in scale.lrs:
        lanczos = {
            "cadence": "adaptive",
            **analyzers["lanczos"],
            "every": odd_cadence(scale.spectrum_every / eta),
        }
        variants[f"eta-{eta:g}"] = {
            "schedule": {
                "amplitude": settings.amplitudes,
                "period": [t / eta for t in settings.periods],
            },
            "train": {
                "lr": [eta],
                "steps": max(1, round(settings.total_steps * scale.time_fraction / eta)),
                "seeds": scale.seeds,
            },
            "analyzers": {**analyzers, "lanczos": lanczos},
        }
    raw.pop("analyzers", None)
    return settings, plan({**raw, "variants": variants})


def run_threshold_study(
    config: Path | str | dict[str, Any], out_dir: Path | str | None
) -> xr.Dataset:
    """Run (or resume) the study a config file or mapping describes; returns the result.

    ``out_dir`` replaces the config's ``output.root`` (None: keep it). Writes the runs' traces,
    ``threshold.nc`` and ``threshold.png`` under ``<root>/<name>/``.
    """
    raw = load_raw(Path(config)) if isinstance(config, str | Path) else copy.deepcopy(config)
    if SECTION not in raw:
        raise ConfigError(SECTION, "missing: a threshold study config needs this section")
    if out_dir is not None:
        raw["output"] = {**(raw.get("output") or {}), "root": str(out_dir)}
    settings, points = study_points(raw)
    root = points[0].config.output.root / str(raw.get("name", "sweep"))
    tables = []
    for path in run_points(points, root):
        trace = open_trace(path)
        tables.append(member_onsets(trace, settings.onset, crossings_of(trace, path, settings)))
    attrs = {"settings": settings.model_dump_json(), "scale": settings.scale}
    result = threshold_dataset(xr.concat(tables, dim="member"), settings.onset, attrs)
    write_netcdf(result, root / "threshold.nc")
    threshold_figure([result]).savefig(root / "threshold.png", dpi=150)
    print(
        f"exponent {result['exponent'].item():.3f} ± {result['exponent_se'].item():.3f}, "
        f"mean λ·η/2 {result['ratio_mean'].item():.3f} ± {result['ratio_sem'].item():.3f} "
        f"({result['n_fitted'].item()} members{excluded(result)}); results in "
        f"{root / 'threshold.nc'}"
    )
    for line in distribution_lines(result):
        print(line)
    return result


def crossings_of(trace: xr.Dataset, path: Path, settings: ThresholdStudySettings) -> xr.Dataset:
    """The trace's crossings (replayed where coarse, if the settings say so), cached beside it
    in ``crossings.nc`` for the trace they were computed from."""
    cached = path.parent / "crossings.nc"
    if cached.exists():
        saved = open_trace(cached)
        if saved.attrs.get("trace_written") == trace.attrs.get("written"):
            return saved
    replays = path.parent / "replays"
    crossings = replay(trace, replays) if settings.replay else find_crossings(trace)
    crossings.attrs["trace_written"] = trace.attrs.get("written", "")
    write_netcdf(crossings, cached)
    return crossings


def distribution_lines(result: xr.Dataset) -> list[str]:
    """Per η: median [interquartile range] (members) of the ratios at crossing and visible
    onset and of the delay between them."""
    lines = []
    for i, eta in enumerate(result["eta"].values):
        parts = []
        for name, label in (
            ("ratio_crossing", "λη/2 at crossing"),
            ("ratio_onset", "at visible onset"),
            ("delay", "delay"),
        ):
            row = {key: result[f"{name}_{key}"].values[i] for key in ("median", "q25", "q75", "n")}
            parts.append(
                f"{label} {row['median']:.4g} [{row['q25']:.4g}, {row['q75']:.4g}] (n={row['n']})"
            )
        lines.append(f"  η = {eta:g}: " + "; ".join(parts))
    return lines


def excluded(result: xr.Dataset) -> str:
    """``", k diverged, excluded"`` where members diverged, else nothing."""
    gone = int(result["n_diverged"].sum())
    return f", {gone} diverged, excluded" if gone else ""
