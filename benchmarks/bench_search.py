"""Is the study's answer right, and what did it cost? The study's w* against an exhaustive grid.

The reference trains, at the study's own protocol (same data, steps, η, seeds, metric), every rung
of the width ladder at a fixed (A, T) grid that covers the papers' region (DCE, one ensemble run
per width) and the static loss at every rung. Like the study, it then scores each rung's pick
(its best grid point on the search seeds) on the study's fresh confirmation seeds with the
study's sequential rule, so grid and study answer the same question: the grid's w* is the
narrowest rung whose pick is confirmed to reach the target. Then the study runs as
``dlf-study run`` would, once per ``--offsets`` value (``search.seed_offset``: disjoint seed
sets), and the answers are compared. Training work is counted in member-steps (steps × ensemble
members); both sides run the same trainer.

Targets (issues 11, 21): each track's w* within one rung of the grid's; the answers on three seed
sets agree within one rung; the study (offset 0) uses at most a quarter of the grid's
member-steps (grid and its confirmation). Scales: ``paper`` is ``configs/min_width.yaml`` as it
is; ``quick`` its ``quick`` scale; ``small`` a one-turn spiral at 2 000 steps for a check in
seconds.

    python benchmarks/bench_search.py --scale paper --offsets 0 100000 200000 \\
        > benchmarks/results/search.txt

The grid's per-width results and confirmations are cached beside the results
(``search-grid-<scale>.json``, keyed by the protocol), so an interrupted benchmark resumes and a
rerun only repeats the studies.
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
from dlf.studies.search.confirm import REACHES, SequentialRule
from dlf.studies.search.evaluate import measure
from dlf.studies.search.ladder import MIN_SEEDS_TO_REJECT

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
KINDS = ("dynamical", "static")


def study_config(scale: str, root: Path, offset: int = 0) -> StudyConfig:
    overrides = {"small": SMALL, "paper": []}.get(scale, [f"search.scale={scale}"])
    overrides = [*overrides, "output.progress=never", f"search.seed_offset={offset}"]
    return load_study_config(CONFIG, overrides).with_root(root)


def at_width(run: RunConfig, width: int, loss: str) -> RunConfig:
    return run.model_copy(
        update={
            "model": run.model.model_copy(update={"width": width}),
            "loss": run.loss.model_copy(update={"name": loss}),
        }
    )


def train(config: StudyConfig, kind: str, width: int, points, seeds, trace: Path):
    """Per-point per-seed metric of ``points`` × ``seeds`` at ``width`` (one run), and its cost."""
    lr = config.run.train.lr[0]
    members = [Member(seed=s, amplitude=a, period=t, lr=lr) for a, t in points for s in seeds]
    run = at_width(config.run, width, config.loss_names()[kind])
    execute(run, members=members, trace_path=trace)
    outcomes = measure(trace, len(points), len(seeds), config.search.metric)
    return [o.values for o in outcomes], sum(o.member_steps for o in outcomes)


def grid_rung(config: StudyConfig, width: int, points: list[tuple[float, float]], root: Path):
    """Per-seed metric of every grid point at one width (DCE), of the static loss, the cost."""
    static = [(1.0, float(config.run.train.steps))]
    result: dict[str, object] = {"member_steps": 0}
    for kind, pts in (("dynamical", points), ("static", static)):
        trace = root / f"grid-{kind}-w{width}.nc"
        values, steps = train(config, kind, width, pts, config.search.seeds, trace)
        result[kind] = values
        result["member_steps"] += steps  # type: ignore[operator]
    return result


def pick(rung: dict, kind: str) -> int:
    """The grid point the search seeds select at a rung: the best seed-mean."""
    means = [sum(v) / len(v) for v in rung[kind]]
    return max(range(len(means)), key=means.__getitem__)


def confirm_pick(config, cache, kind, width, points, root) -> dict:
    """The rung's pick on fresh seeds, round after round as the study's rule asks."""
    rule = SequentialRule.of(config.search)
    rung = cache["widths"][str(width)]
    i = pick(rung, kind)
    searched = rung[kind][i]
    point = points[i] if kind == "dynamical" else (1.0, float(config.run.train.steps))
    fresh: list[float] = []
    steps = 0
    if len(searched) >= MIN_SEEDS_TO_REJECT:
        verdict = rule.estimate(searched, final=False).verdict
        if verdict == "does not reach":
            return {"values": [], "member_steps": 0, "verdict": verdict, "on": "search seeds"}
    while rule.confirmed(fresh).verdict is None:
        seeds = [config.search.confirm_seed(k) for k in rule.next_round(len(fresh))]
        trace = root / f"fresh-{kind}-w{width}-{len(fresh)}.nc"
        (values,), cost = train(config, kind, width, [point], seeds, trace)
        fresh += values
        steps += cost
    verdict = rule.confirmed(fresh).verdict
    return {"values": fresh, "member_steps": steps, "verdict": verdict, "on": "fresh seeds"}


def run_grid(config: StudyConfig, scale: str, root: Path) -> dict:
    """The grid and its confirmations, cached in ``results/search-grid-<scale>.json``."""
    amplitudes, periods = GRID[scale]
    points = list(itertools.product(amplitudes, periods))
    key = json.dumps({"setup": setup_fingerprint(config), "points": points}, sort_keys=True)
    cache_file = RESULTS / f"search-grid-{scale}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if cache.get("key") != key:
        cache = {"key": key, "points": points, "widths": {}, "fresh": {}}
    for width in config.search.width.ladder():
        for kind in (None, *KINDS):  # the grid rung, then its confirmation per track
            name = str(width) if kind is None else f"{kind}-{width}"
            table = cache["widths"] if kind is None else cache["fresh"]
            if name in table:
                continue
            start = time.perf_counter()
            if kind is None:
                result = grid_rung(config, width, points, root)
            else:
                result = confirm_pick(config, cache, kind, width, points, root)
            result["wall_s"] = round(time.perf_counter() - start, 1)
            table[name] = result
            cache_file.write_text(json.dumps(cache, indent=1))
            shown = {k: v for k, v in result.items() if k not in ("values", *KINDS)}
            print(f"grid {name}: {shown}", flush=True)
    return cache


def grid_answer(cache: dict, ladder: list[int], kind: str) -> int | None:
    """The narrowest rung whose grid pick is confirmed on fresh seeds."""
    return next((w for w in ladder if cache["fresh"][f"{kind}-{w}"]["verdict"] == REACHES), None)


def apart(ladder: list[int], a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return 0 if a == b else None
    return abs(ladder.index(a) - ladder.index(b))


def run_studies(args, root: Path) -> list[tuple[int, object, float]]:
    """The study once per seed offset, each in its own folder: (offset, result, wall)."""
    runs = []
    for offset in args.offsets:
        config = study_config(args.scale, root / f"offset{offset}", offset)
        start = time.perf_counter()
        result = run_study(config, workers=args.workers)
        runs.append((offset, result, time.perf_counter() - start))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(GRID), default="paper")
    parser.add_argument("--grid-only", action="store_true", help="train (or resume) the grid")
    parser.add_argument("--workers", type=int, default=1, help="the study's --workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument(
        "--offsets", type=int, nargs="+", default=[0], help="search.seed_offset of each study"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = study_config(args.scale, root)
        start = time.perf_counter()
        cache = run_grid(config, args.scale, root)
        grid_seconds = time.perf_counter() - start
        if args.grid_only:
            return
        runs = run_studies(args, root)
    report(config, cache, runs, grid_seconds, args.scale)


def report(config, cache, runs, grid_seconds: float, scale: str) -> None:
    search = config.search
    ladder = search.width.ladder()
    grid_steps = sum(r["member_steps"] for r in cache["widths"].values())
    grid_steps += sum(r["member_steps"] for r in cache["fresh"].values())
    print(
        f"set-up: scale {scale}, {config.run.data.options}, {config.run.train.steps} steps, "
        f"η {config.run.train.lr[0]:g}, {len(search.seeds)} search seeds, target "
        f"{search.metric} {search.target:g}, widths {ladder}; grid (A, T) = {cache['points']}"
    )
    print("grid pick per width on the search seeds → on fresh seeds (dynamical | static):")
    for w in ladder:
        cells = []
        for kind in KINDS:
            rung, fresh = cache["widths"][str(w)], cache["fresh"][f"{kind}-{w}"]
            values = rung[kind][pick(rung, kind)]
            est = SequentialRule.of(search).confirmed(fresh["values"]) if fresh["values"] else None
            confirmed = f"{est.mean:.3f} ± {est.sem:.3f} ({est.n})" if est else "—"
            cells.append(
                f"{sum(values) / len(values):.3f} → {confirmed} {fresh['verdict']}"
                f"{' (search seeds)' if fresh['on'] == 'search seeds' else ''}"
            )
        print(f"  {w:>5}: {cells[0]:<48} | {cells[1]}")
    ok = True
    answers: dict[str, list[int | None]] = {kind: [] for kind in KINDS}
    for offset, result, wall in runs:
        steps = sum(f.member_steps for f in result.findings.values())
        print(f"study, seed_offset {offset}: {steps:,} member-steps, wall {wall:.1f} s")
        for kind, found in result.findings.items():
            grid_w = grid_answer(cache, ladder, kind)
            gap = apart(ladder, found.w_star, grid_w)
            ok = ok and gap is not None and gap <= 1
            answers[kind].append(found.w_star)
            print(f"  {kind:>9}: grid w* = {grid_w}, rungs apart: {gap} (target <= 1)")
            print(f"             {found.sentence(search.target, search.metric)}")
        if offset == runs[0][0]:
            share = steps / grid_steps
            ok = ok and share <= 0.25
            print(f"  study / grid member-steps = {share:.3f} (target <= 0.25)")
    for kind, ws in answers.items():
        spread = max((apart(ladder, a, b) or 0) for a in ws for b in ws) if ws else 0
        ok = ok and spread <= 1
        print(f"{kind} w* over the seed sets: {ws} (at most {spread} rungs apart, target <= 1)")
    trained = sum(r["wall_s"] for r in [*cache["widths"].values(), *cache["fresh"].values()])
    print(
        f"grid member-steps {grid_steps:,} with its confirmation; wall {trained:.1f} s when "
        f"trained ({grid_seconds:.1f} s in this run)"
    )
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
