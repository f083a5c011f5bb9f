"""Is the study's answer right, and what did it cost? The study's w* against an exhaustive grid.

The reference trains, at the study's own protocol (same data, steps, η, seeds, metric), every rung
of the width ladder at a fixed (A, T) grid that covers the papers' region (DCE, one ensemble run
per width) and the static loss at every rung; its w* is the narrowest rung whose best grid point
reaches the target. Then the study runs as ``dlf-study run`` would. Training work is counted in
member-steps (steps × ensemble members); both sides run the same trainer.

Targets (issue 11): each track's w* within one rung of the grid's; the study uses at most a
quarter of the grid's member-steps. Scales: ``paper`` is ``configs/min_width.yaml`` as it is
(the papers' set-up, ~20 min of grid on 2 cores); ``quick`` its ``quick`` scale; ``small`` a
one-turn spiral at 2 000 steps for a check in seconds.

    python benchmarks/bench_search.py --scale paper > benchmarks/results/search.txt

The grid's per-width results are cached beside the results (``search-grid-<scale>.json``, keyed
by the protocol), so an interrupted benchmark resumes and a rerun only repeats the study.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from dlf.config import Member, RunConfig
from dlf.engine.run import execute
from dlf.studies.search import run_study
from dlf.studies.search.config import StudyConfig, load_study_config, setup_fingerprint
from dlf.studies.search.evaluate import measure

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "min_width.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
GRID = {  # (amplitudes, periods) per scale: the papers' region 5 ≲ A ≲ 20, T ≲ 300, and beyond
    "paper": ((5.0, 10.0, 20.0), (50.0, 100.0, 200.0, 400.0)),
    "quick": ((5.0, 10.0, 20.0), (50.0, 100.0, 200.0, 400.0)),
    "small": ((3.0, 6.0, 12.0), (20.0, 50.0, 120.0)),
}
SMALL = [  # overrides of the shipped config for the seconds-long check
    "data.turns=1.0",
    "train.steps=2000",
    "train.eval_every=100",
    "search.seeds=4",
    "search.width={low: 3, high: 24, per_octave: 3}",
    "search.amplitude={low: 2, high: 16}",
    "search.period={low: 15, high: 200}",
    "search.points=[{amplitude: 6, period: 50}]",
]


def study_config(scale: str, root: Path) -> StudyConfig:
    overrides = {"small": SMALL, "paper": []}.get(scale, [f"search.scale={scale}"])
    config = load_study_config(CONFIG, [*overrides, "output.progress=never"])
    return config.with_root(root)


def at_width(run: RunConfig, width: int, loss: str) -> RunConfig:
    return run.model_copy(
        update={
            "model": run.model.model_copy(update={"width": width}),
            "loss": run.loss.model_copy(update={"name": loss}),
        }
    )


def grid_rung(config: StudyConfig, width: int, points: list[tuple[float, float]], root: Path):
    """Seed-means of every grid point at one width (DCE), of the static loss, and the cost."""
    seeds, metric = config.search.seeds, config.search.metric
    lr = config.run.train.lr[0]
    names = config.loss_names()
    result: dict[str, object] = {}
    steps = 0
    for kind, pts in (("dynamical", points), ("static", [(1.0, float(config.run.train.steps))])):
        members = [Member(seed=s, amplitude=a, period=t, lr=lr) for a, t in pts for s in seeds]
        trace = root / f"grid-{kind}-w{width}.nc"
        execute(at_width(config.run, width, names[kind]), members=members, trace_path=trace)
        outcomes = measure(trace, len(pts), len(seeds), metric)
        result[kind] = [o.mean for o in outcomes]
        steps += sum(o.member_steps for o in outcomes)
    result["member_steps"] = steps
    return result


def run_grid(config: StudyConfig, scale: str, root: Path) -> dict:
    """The grid, cached per width in ``results/search-grid-<scale>.json`` (keyed by protocol)."""
    amplitudes, periods = GRID[scale]
    points = list(itertools.product(amplitudes, periods))
    key = json.dumps({"setup": setup_fingerprint(config), "points": points}, sort_keys=True)
    cache_file = RESULTS / f"search-grid-{scale}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if cache.get("key") != key:
        cache = {"key": key, "points": points, "widths": {}}
    for width in config.search.width.ladder():
        if str(width) in cache["widths"]:
            continue
        start = time.perf_counter()
        rung = grid_rung(config, width, points, root)
        rung["wall_s"] = round(time.perf_counter() - start, 1)
        cache["widths"][str(width)] = rung
        cache_file.write_text(json.dumps(cache, indent=1))
        print(f"grid width {width}: {rung}", flush=True)
    return cache


def grid_w_star(cache: dict, ladder: list[int], kind: str, target: float) -> int | None:
    return next((w for w in ladder if max(cache["widths"][str(w)][kind]) >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(GRID), default="paper")
    parser.add_argument("--grid-only", action="store_true", help="train (or resume) the grid")
    parser.add_argument("--workers", type=int, default=1, help="the study's --workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = study_config(args.scale, root)
        search = config.search
        ladder = search.width.ladder()
        start = time.perf_counter()
        cache = run_grid(config, args.scale, root)
        grid_seconds = time.perf_counter() - start
        if args.grid_only:
            return
        start = time.perf_counter()
        result = run_study(config, workers=args.workers)
        study_seconds = time.perf_counter() - start

    grid_steps = sum(r["member_steps"] for r in cache["widths"].values())
    study_steps = sum(f.member_steps for f in result.findings.values())
    print(
        f"set-up: scale {args.scale}, {config.run.data.options}, {config.run.train.steps} steps, "
        f"η {config.run.train.lr[0]:g}, {len(search.seeds)} seeds, target {search.metric} "
        f"{search.target:g}, widths {ladder}; grid (A, T) = {cache['points']}"
    )
    print("grid best per width (dynamical / static):")
    for w in ladder:
        rung = cache["widths"][str(w)]
        print(f"  {w:>5}: {max(rung['dynamical']):.3f} / {max(rung['static']):.3f}")
    ok = study_steps <= 0.25 * grid_steps
    for kind, found in result.findings.items():
        grid_w = grid_w_star(cache, ladder, kind, search.target)
        apart = (
            abs(ladder.index(found.w_star) - ladder.index(grid_w))
            if found.w_star is not None and grid_w is not None
            else (0 if found.w_star == grid_w else None)
        )
        ok = ok and apart is not None and apart <= 1
        print(
            f"{kind:>9}: grid w* = {grid_w}, study w* = {found.w_star} ({found.trials} trials, "
            f"{found.member_steps:,} member-steps), rungs apart: {apart} (target <= 1)"
        )
    cached = sum(r["wall_s"] for r in cache["widths"].values())
    print(
        f"grid  member-steps {grid_steps:>13,}   wall {cached:7.1f} s when trained "
        f"({grid_seconds:.1f} s in this run)"
    )
    print(f"study member-steps {study_steps:>13,}   wall {study_seconds:7.1f} s")
    print(f"study / grid member-steps = {study_steps / grid_steps:.3f} (target <= 0.25)")
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
