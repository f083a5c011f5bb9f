"""What ``configs/min_width_cifar.yaml`` costs on a CPU, from a short measured prefix.

Running the study (days on 2 cores) to time it is not an option, so this times its parts on
CIFAR-shaped data (the synthetic python-batch folder the tests write: the same shapes, so the
same arithmetic) and projects: CPU seconds (``time.process_time``, one thread) of one training
step per member (Myrtle5, minibatch 512, float32, the config's optimiser) at every rung of
the channel ladder, each the median of ``--repeats`` timings of ``--steps`` steps, plus its
evaluations (one forward pass over the 3 000 validation images every ``eval_every`` steps); the
study's CPU time for every answer a track can have, from the rungs its bisection visits for
that answer (:class:`~dlf.studies.search.ladder.Bracket`'s probes), each rung decided at the
least by its first batch and first confirmation round and at the most by all its trials and the
most fresh seeds (:func:`dlf.studies.search.cost.member_steps` counts the same way).

    python benchmarks/bench_min_width_cifar.py > benchmarks/results/min_width_cifar.txt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlf.config import Member
from dlf.engine.gradients import gradient_for
from dlf.engine.run import prepare
from dlf.studies.search import load_study_config
from dlf.studies.search.cost import member_steps

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "min_width_cifar.yaml"


def cifar_folder(root: Path) -> Path:
    """A CIFAR-format folder with ≥ 3 000 training images of classes 0-2 (synthetic pixels)."""
    import sys

    sys.path.insert(0, str(CONFIG.parents[1]))
    from tests.cifar_fixtures import write_cifar

    return write_cifar(root / "cifar-10-batches-py", per_batch=2000)


def step_seconds(config, channels: int, steps: int, repeats: int) -> list[float]:
    """CPU seconds per member-step at ``channels`` (one member, the config's minibatch)."""
    run_config = config.at_width(config.run, channels)
    _, _, run = prepare(run_config, members=[Member(seed=0, amplitude=1.0, period=1.0, lr=0.02)])
    gradient = gradient_for(run.objective)
    theta = run.model.init([0], "standard", run.dtype, run.device)
    gamma = torch.ones(1, run.objective.n_classes, dtype=run.dtype)
    active = torch.ones(1, dtype=torch.bool)
    rows = torch.arange(run_config.train.batch_size)
    x, y = run.objective.x[rows][None], run.objective.y[rows][None]
    gradient(theta, gamma, active, x, y)  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(steps):
            gradient(theta, gamma, active, x, y)
        timings.append((time.process_time() - start) / steps)
    return timings


def eval_seconds(config, channels: int, n_val: int) -> float:
    """CPU seconds of one member's forward pass over ``n_val`` validation images."""
    run_config = config.at_width(config.run, channels)
    _, _, run = prepare(run_config, members=[Member(seed=0, amplitude=1.0, period=1.0, lr=0.02)])
    theta = run.model.init([0], "standard", run.dtype, run.device)
    x = run.x_val[:500]
    with torch.no_grad():
        run.model.forward(theta, x)
        start = time.process_time()
        run.model.forward(theta, x)
    return (time.process_time() - start) * n_val / len(x)


def probes(n: int, answer: int) -> list[int]:
    """The rungs (indices) a bisection over ``n`` rungs visits when rung ``answer`` is the
    narrowest that reaches (``n``: none does), as :class:`~dlf.studies.search.ladder.Bracket`
    probes them."""
    lo, hi, seen = -1, n, []
    while hi - lo > 1:
        probe = (lo + hi + 1) // 2
        seen.append(probe)
        lo, hi = (lo, probe) if probe >= answer else (probe, hi)
    return seen


def track_seconds(
    config, kind: str, per_step: dict[int, float], answer: int
) -> tuple[float, float]:
    """(least, most) CPU seconds of one track whose answer is rung ``answer``: each visited
    rung decided by its first batch and first confirmation round, or by all its trials and the
    most fresh seeds (as :func:`dlf.studies.search.cost.member_steps` counts)."""
    search, steps = config.search, config.run.train.steps
    ladder, seeds = search.width.ladder(), len(search.trial_seeds())
    per_width = search.trials_at_width(kind)
    least_members = min(search.batch, per_width) * seeds + search.confirm_seeds
    most_members = per_width * seeds + search.confirm_max
    visited = [per_step[ladder[i]] for i in probes(len(ladder), answer)]
    return (
        sum(visited) * least_members * steps,
        sum(visited) * most_members * steps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = cifar_folder(Path(tmp))
        config = load_study_config(CONFIG, [f"data.path={folder}"])
        ladder, train = config.search.width.ladder(), config.run.train
        print(f"ladder {ladder}; one thread; CPU seconds (process_time)")
        per_step = {}
        for c in ladder:
            t = step_seconds(config, c, args.steps, args.repeats)
            ev = eval_seconds(config, c, 3000)
            share = train.steps // train.eval_every * ev / (train.steps * statistics.median(t))
            per_step[c] = statistics.median(t) * (1 + share)
            print(
                f"channels {c:3d}: {statistics.median(t):.3f} s per member-step (median of "
                f"{len(t)} × {args.steps} steps; range {min(t):.3f}–{max(t):.3f}), one "
                f"evaluation of 3000 images {ev:.2f} s per member (+{share:.1%} over a run)"
            )
    least, most = member_steps(config)
    print(f"member-steps of the study: {least:,} (least) to {most:,} (most)")
    n = len(ladder)
    answers = {k: (ladder[k] if k < n else "none") for k in range(n + 1)}
    both = {
        kind: {k: track_seconds(config, kind, per_step, k) for k in answers}
        for kind in ("dynamical", "static")
    }
    for kind, by_answer in both.items():
        row = ", ".join(
            f"w*={answers[k]}: {lo / 86400:.1f}–{hi / 86400:.1f}"
            for k, (lo, hi) in by_answer.items()
        )
        print(f"{kind} track, CPU-days on one core by its answer: {row}")
    low = sum(min(v[0] for v in by.values()) for by in both.values())
    high = sum(max(v[1] for v in by.values()) for by in both.values())
    print(
        f"whole study: {low / 86400:.1f}–{high / 86400:.1f} CPU-days on one core "
        f"(evaluations included); on 2 cores (--workers 2, perfect split) "
        f"{low / 2 / 86400:.1f}–{high / 2 / 86400:.1f} days of wall time"
    )


if __name__ == "__main__":
    main()
