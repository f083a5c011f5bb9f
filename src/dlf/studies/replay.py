"""Resolve edge-of-stability crossings to the step by replaying a finished run.

Where a run's spectrum was sampled too sparsely around a crossing of η_t·λmax/c = 1 (the
samples around it are more than one step apart, or the bounce's growth between crossing and
visible onset has no consecutive samples), the run is trained again from its start (the
trajectory is deterministic: full-batch gradient descent, the same kernels, a member trained
alone equals its ensemble row) for the members concerned, with the spectrum analyzer sampling
every step from the sample before the crossing to the onset, and stopped after the last such
window. The replay's losses must equal the recorded ones (else :class:`DlfError`); its samples
are merged into the trace's and :func:`dlf.analysis.crossing.find_crossings` runs on the union.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from dlf.analysis.crossing import MIN_FIT, find_crossings
from dlf.config import RunConfig, members_of
from dlf.engine.run import execute
from dlf.errors import DlfError

SPECTRUM = "lanczos"
SAMPLES = ("eigenvalues", "factor", "error_bound", "grad_along_top")  # what find_crossings reads
AGREE = 1e-9  # largest relative difference of replayed and recorded losses


def replay_windows(trace: xr.Dataset, crossings: xr.Dataset) -> dict[int, list[tuple[int, int]]]:
    """Per member, the [first, last] steps to sample at every step, to two steps past each
    coarse event's onset (both walls around it): from the last sample below the crossing, for
    crossings not resolved to the step or without a growth fit; from the first step searched,
    for events without a crossing whose factor was already above 1 there (the crossing came
    before the search's first sample) or whose last sample came before the onset (the factor
    rose too fast for the cadence)."""
    member = trace["bifurcation_member"].values
    start = trace["bifurcation_start"].values
    before = crossings["crossing_before"].values
    found = np.isfinite(before)
    coarse = found & (
        (crossings["crossing_bracket"].values > 1)
        | (crossings["crossing_growth_n"].values < MIN_FIT)
    )
    late = crossings["crossing_last_sample"].values < start - 1
    above = ~found & ((crossings["crossing_max_factor"].values >= 1) | late)
    first = np.where(found, before, crossings["crossing_searched_from"].values)
    windows: dict[int, list[tuple[int, int]]] = {}
    for e in np.flatnonzero(coarse | above):
        windows.setdefault(int(member[e]), []).append((int(first[e]), int(start[e]) + 2))
    return windows


def replay_config(trace: xr.Dataset, windows: list[tuple[int, int]]) -> RunConfig:
    """The trace's config with only the spectrum analyzer, sampling the windows, stopping after."""
    raw = json.loads(trace.attrs["config"])
    original = raw["analyzers"][SPECTRUM]
    raw["analyzers"] = {
        SPECTRUM: {
            "k": 1,
            "tol": original.get("tol", 1e-3),
            "loss": original.get("loss", "dynamical"),
            "every": raw["train"]["steps"] + 1,
            "windows": sorted(windows),
            "stop_after_windows": True,
        }
    }
    raw["train"]["record_every"] = 1
    raw["output"] = {**raw["output"], "checkpoint_seconds": 10**9, "progress": "never"}
    return RunConfig.model_validate(raw)


def replay(trace: xr.Dataset, folder: Path | None = None) -> xr.Dataset:
    """``find_crossings`` of ``trace`` after replaying the coarse events' windows (see module).

    ``folder`` keeps the replay traces (``replay-<member>.nc``); None: a temporary folder.
    """
    crossings = find_crossings(trace)
    windows = replay_windows(trace, crossings)
    if not windows:
        return crossings
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(folder or scratch)
        where.mkdir(parents=True, exist_ok=True)
        merged = trace
        for m, spans in sorted(windows.items()):
            replayed = _replay_member(trace, m, spans, where / f"replay-{m}.nc")
            merged = _merge(merged, replayed, m)
        return find_crossings(merged)


def _replay_member(
    trace: xr.Dataset, m: int, spans: list[tuple[int, int]], path: Path
) -> xr.Dataset:
    """Member ``m`` trained again, every step of ``spans`` sampled; checked against the trace."""
    config = replay_config(trace, spans)
    member = members_of(config)[m]
    result = execute(config, members=[member], trace_path=path, progress=False).open()
    steps = np.intersect1d(result["step"].values, trace["step"].values)  # both record these
    recorded = trace["loss"].isel(member=m).sel(step=steps).values
    again = result["loss"].isel(member=0).sel(step=steps).values
    scale = np.maximum(np.abs(recorded), 1e-300)
    worst = float(np.nanmax(np.abs(again - recorded) / scale)) if steps.size else 0.0
    if not worst <= AGREE:
        raise DlfError(
            f"replay of member {m} does not reproduce the recorded losses (relative difference "
            f"{worst:.2e} > {AGREE:g}); the run is not deterministic here"
        )
    return result


def _merge(trace: xr.Dataset, replayed: xr.Dataset, m: int) -> xr.Dataset:
    """``trace`` with member ``m``'s replayed samples of what crossings read added: a replayed
    value where there is one, the recorded one elsewhere (other members' new steps are NaN)."""
    names = [f"{SPECTRUM}_{key}" for key in SAMPLES]
    extra = replayed[names].isel(lanczos_index=[0]).assign_coords(member=[m])
    merged = extra.combine_first(trace[names].isel(lanczos_index=[0]))
    return trace.drop_dims(f"{SPECTRUM}_step").assign(merged.data_vars)
