"""What ``configs/min_width_cifar.yaml`` costs on a CPU, from a short measured prefix.

Running the study (days on 2 cores) to time it is not an option, so this times its parts on
CIFAR-shaped data (the synthetic python-batch folder the tests write: the same shapes, so the
same arithmetic) and projects: CPU seconds (``time.process_time``, one thread) of one training
step per member (Myrtle5, minibatch 512, float32, the config's optimiser) at several channel
counts, each the median of ``--repeats`` timings of ``--steps`` steps; one evaluation of the
3 000 validation images; and the study's member-steps at the least and the most
(:func:`dlf.studies.search.cost.member_steps`). The projection brackets the rungs a bisection
visits by the cheapest and the dearest path through the ladder, and says so.

    python benchmarks/bench_min_width_cifar.py > benchmarks/results/min_width_cifar.txt
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlf.config import Member
from dlf.engine.gradients import gradient_for
from dlf.engine.run import prepare
from dlf.studies.search import load_study_config
from dlf.studies.search.cost import member_steps, rungs_per_track

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = cifar_folder(Path(tmp))
        config = load_study_config(CONFIG, [f"data.path={folder}"])
        ladder = config.search.width.ladder()
        print(f"ladder {ladder}; one thread; CPU seconds (process_time)")
        per_step = {}
        for c in args.channels:
            t = step_seconds(config, c, args.steps, args.repeats)
            ev = eval_seconds(config, c, 3000)
            per_step[c] = statistics.median(t)
            spread = (max(t) - min(t)) / 2
            train = config.run.train
            share = train.steps // train.eval_every * ev / (train.steps * per_step[c])
            print(
                f"channels {c:3d}: {per_step[c]:.3f} s ± {spread:.3f} per member-step "
                f"(median of {len(t)} × {args.steps} steps; ± half the range), one evaluation "
                f"of 3000 images {ev:.2f} s per member (+{share:.1%} over a run)"
            )
    least, most = member_steps(config)
    # t(c) ~ c² for Myrtle5 at these widths: fit the exponent between the measured ends
    lo, hi = min(per_step), max(per_step)
    k = math.log(per_step[hi] / per_step[lo]) / math.log(hi / lo)

    def t(c: int) -> float:
        return per_step[lo] * (c / lo) ** k

    rungs = rungs_per_track(len(ladder))
    cheap = statistics.mean(t(c) for c in ladder[:rungs])
    dear = statistics.mean(t(c) for c in ladder[-rungs:])
    print(f"t(c) ≈ {per_step[lo]:.3f} s · (c/{lo})^{k:.2f}; {rungs} rungs per track")
    print(f"member-steps: {least:,} (least) to {most:,} (most)")
    for name, steps in (("least", least), ("most", most)):
        print(
            f"{name}: {steps * cheap / 86400:.1f}–{steps * dear / 86400:.1f} CPU-days on one "
            f"core (cheapest–dearest {rungs} rungs), evaluations not included"
        )


if __name__ == "__main__":
    main()
