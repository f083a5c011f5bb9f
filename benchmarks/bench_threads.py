"""One run on a busy machine: dlf-study's thread policy against torch's defaults, beside 0, 2
and 4 competing CPU-bound processes, as wall time over the fair share.

Run ``python benchmarks/bench_threads.py`` (about 10 minutes on a 2-core CPU at the defaults;
``--steps``, ``--seeds``, ``--width`` the run, ``--load 0,2,4`` the competitors, ``--repeats``).

- **policy**: ``dlf-study run`` as a user runs it: OpenMP spins at most ``GOMP_SPINCOUNT`` =
  10 000 iterations before it sleeps, and the thread count is the idle share of the usable CPUs,
  sampled when the command starts (``dlf.threads``).
- **passive**: the same thread choice with ``OMP_WAIT_POLICY=PASSIVE`` (no spinning at all).
- **torch default**: the same command started so that torch loads before dlf (libgomp's default:
  spin 300 000 iterations, then sleep) and with ``--threads`` = the usable CPUs, torch's own
  default: what every version before 0.3 did.

Each competitor is a Python process spinning on one core (``while True: pass``), started a
second before the run so that the policy's load sample sees it. The **fair share** of a
one-thread job beside k competitors on c cores is ``W1 · max(1, (k + 1) / c)``, with W1 the
run's wall time on one thread alone (measured first); the target (issue 22) is wall ≤ 1.5 ×
fair share. Times are the run's own (the trace's ``wall_seconds``, imports excluded), the
median of ``--repeats`` runs with their range; the whole command's median wall and the load
average before each set are shown too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_training as training
import yaml

from dlf.engine.trace import open_trace
from dlf.threads import usable_cpus

RESULTS = Path(__file__).parent / "results" / "threads.txt"
SPIN = "while True: pass"
POLICY = "import sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"
TORCH_FIRST = "import torch, sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"


def write_config(root: Path, args: argparse.Namespace) -> Path:
    """The measured run: the papers' spiral, DCE at A = 10, T = 100, η = 1, float64."""
    raw = {
        "name": "bench",
        "data": {"name": "spiral"},
        "model": {"width": args.width, "init": "standard", "dtype": "float64"},
        "loss": {"name": "dce"},
        "schedule": {"amplitude": 10, "period": 100},
        "train": {"steps": args.steps, "lr": 1.0, "seeds": args.seeds, "eval_every": 500},
        "output": {"root": str(root), "progress": "never"},
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


VARIANTS = ("policy", "passive", "torch default")


def timed_run(config: Path, variant: str, cpus: int) -> tuple[float, dict]:
    """Wall seconds of one ``dlf-study run`` command (a fresh process, imports included) and
    its trace's attributes (``wall_seconds``: the run alone)."""
    code, extra = {
        "policy": (POLICY, []),
        "passive": (POLICY, []),
        "one thread": (POLICY, ["--threads", "1"]),
        "torch default": (TORCH_FIRST, ["--threads", str(cpus)]),
    }[variant]
    unset = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DLF_THREADS", "OMP_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if variant == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, "run", str(config), "--fresh", *extra],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    return wall, dict(open_trace(config.parent / "bench" / "trace.nc").attrs)


def with_competitors(k: int, measure):
    """``measure()`` while ``k`` spinning processes run."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(k)]
    try:
        time.sleep(1.0 if k else 0.0)
        return measure()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--load", default="0,2,4", help="competing processes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpus = len(usable_cpus())
    out = training.Results(args.out)
    out(
        f"bench_threads: {platform.processor() or 'cpu'}, {cpus} usable CPUs, python "
        f"{sys.version.split()[0]}; one run of {args.seeds} members, width {args.width}, "
        f"{args.steps} steps, float64; median (min-max) of {args.repeats} runs"
    )
    out(
        f"{'competitors':>11} {'variant':>13} {'threads':>7} {'run wall s':>17} {'fair s':>7} "
        f"{'ratio':>5} {'command wall s':>14}"
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), args)
        load = os.getloadavg()[0]
        alone = statistics.median(
            float(timed_run(config, "one thread", cpus)[1]["wall_seconds"])
            for _ in range(args.repeats)
        )
        out(f"one thread alone (W1): {alone:.2f} s, load average before {load:.2f}")
        for k in (int(x) for x in args.load.split(",")):
            out(f"load average before: {os.getloadavg()[0]:.2f}")
            for variant in VARIANTS:
                runs = [
                    with_competitors(k, lambda v=variant: timed_run(config, v, cpus))
                    for _ in range(args.repeats)
                ]
                walls = [float(attrs["wall_seconds"]) for _, attrs in runs]
                median = statistics.median(walls)
                command = statistics.median(wall for wall, _ in runs)
                fair = alone * max(1.0, (k + 1) / cpus)
                threads = sorted({int(attrs["threads"]) for _, attrs in runs})
                out(
                    f"{k:>11} {variant:>13} {'/'.join(map(str, threads)):>7} "
                    f"{median:>6.1f} ({min(walls):.1f}-{max(walls):.1f}) {fair:>7.1f} "
                    f"{median / fair:5.2f} {command:>14.1f}"
                )
    out(f"\ntotal {time.perf_counter() - start:.0f} s wall")
    out.save()


if __name__ == "__main__":
    main()
