"""Search efficiency: the study's w* against an exhaustive (width, A, T) grid, and what each cost.

Set-up: the one-turn spiral (3 × 100 points), 2000 steps of full-batch GD at η = 1, float64,
DCE with the last period static, 4 seeds, target 0.85 seed-mean validation accuracy, widths
3…24 (three rungs per octave, 10 rungs). The grid trains every width at 4 amplitudes × 4 periods
(each width one 64-member ensemble run); its w* is the narrowest width whose best grid point
reaches the target. The study searches the same width ladder with A in [1.5, 24] and T in
[20, 300] (log scales) with the default sampler and pruner and no static baseline. Training work
is counted in member-steps (steps × ensemble members) — both sides run the same trainer.

Target (issue 6): the study's w* within one rung of the grid's, for at most a quarter of the
grid's member-steps. Run (one thread is fastest for these tiny networks; ~2–5 min):

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py > benchmarks/results/search.txt
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dlf.config import Member
from dlf.run import execute
from dlf.search import run_study
from dlf.search.config import study_config_from_raw
from dlf.search.evaluate import measure

AMPLITUDES = (1.5, 3.0, 6.0, 12.0)
PERIODS = (20.0, 50.0, 120.0, 300.0)
SEEDS = 4


def study_raw(root: Path, steps: int, target: float) -> dict:
    return {
        "name": "bench_search",
        "data": {"name": "spiral", "turns": 1.0},
        "model": {"dtype": "float64"},
        "loss": {"name": "dce"},
        "train": {"steps": steps, "lr": 1.0, "eval_every": 100},
        "output": {"root": str(root), "progress": "never"},
        "search": {
            "target": target,
            "seeds": SEEDS,
            "width": {"low": 3, "high": 24, "per_octave": 3},
            "amplitude": {"low": min(AMPLITUDES), "high": 24.0},
            "period": {"low": min(PERIODS), "high": max(PERIODS)},
            "static_baseline": False,
            "trials_per_width": 8,
            "batch": 4,
            "trials": 64,
        },
    }


def grid(config, root: Path) -> tuple[dict[int, float], int]:
    """Best seed-mean metric over the (A, T) grid at every width, and the member-steps spent."""
    points = list(itertools.product(AMPLITUDES, PERIODS))
    lr = config.run.train.lr[0]
    members = [
        Member(seed=s, amplitude=a, period=t, lr=lr) for a, t in points for s in range(SEEDS)
    ]
    best, member_steps = {}, 0
    for width in config.search.width.ladder():
        run = config.run.model_copy(
            update={"model": config.run.model.model_copy(update={"width": width})}
        )
        trace = root / f"grid-w{width}.nc"
        execute(run, members=members, trace_path=trace, progress=False)
        outcomes = measure(trace, len(points), SEEDS, config.search.metric)
        best[width] = max(o.mean for o in outcomes)
        member_steps += sum(o.member_steps for o in outcomes)
    return best, member_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--target", type=float, default=0.85)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = study_config_from_raw(study_raw(root, args.steps, args.target))
        ladder = config.search.width.ladder()
        start = time.perf_counter()
        best, grid_steps = grid(config, root)
        grid_seconds = time.perf_counter() - start
        grid_w = next((w for w in ladder if best[w] >= args.target), None)

        start = time.perf_counter()
        found = run_study(config).findings["dynamical"]
        study_seconds = time.perf_counter() - start

    print(
        f"set-up: one-turn spiral, {args.steps} steps, DCE, {SEEDS} seeds, target "
        f"{args.target:g}, widths {ladder}"
    )
    print(
        f"grid ({len(AMPLITUDES)} A x {len(PERIODS)} T per width): best per width "
        + ", ".join(f"{w}: {best[w]:.3f}" for w in ladder)
    )
    print(f"grid  w* = {grid_w}   member-steps {grid_steps:>12,}   wall {grid_seconds:7.1f} s")
    print(
        f"study w* = {found.w_star}   member-steps {found.member_steps:>12,}   wall "
        f"{study_seconds:7.1f} s   ({found.trials} trials, {found.bracket.describe()})"
    )
    ratio = found.member_steps / grid_steps
    rungs_apart = (
        abs(ladder.index(found.w_star) - ladder.index(grid_w))
        if found.w_star is not None and grid_w is not None
        else None
    )
    print(
        f"study / grid member-steps = {ratio:.3f} (target <= 0.25); w* rungs apart: "
        f"{rungs_apart} (target <= 1)"
    )
    ok = ratio <= 0.25 and rungs_apart is not None and rungs_apart <= 1
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
