"""Landscape movie: time to render ``configs/landscape_quick.yaml``'s movie (issue 26's target:
under a minute on the 2-core machine, shared with other jobs).

Trains the config once into a temporary folder, then renders its movie ``--repeats`` times
(wall-clock and this process's CPU time of each; median and range), with the writer the machine
has (ffmpeg MP4, else Pillow GIF). Run:

    python benchmarks/bench_movie.py > benchmarks/results/movie.txt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dlf
from dlf.config import load_config
from dlf.plots import landscape_movie

CONFIG = Path(__file__).parents[1] / "configs" / "landscape_quick.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(CONFIG, [f"output.root={tmp}", "output.progress=never"])
        start = time.perf_counter()
        trace = dlf.execute(config).open()
        train = time.perf_counter() - start
        walls, cpus = [], []
        for i in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            movie = landscape_movie(trace)
            movie.save(Path(tmp) / f"movie-{i}.{movie.suffix}")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        size = (Path(tmp) / f"movie-0.{movie.suffix}").stat().st_size
    print(f"landscape_quick: training with the slicer {train:.1f} s wall")
    print(
        f"movie: {movie.frames} frames, {movie.writer} → .{movie.suffix}, {size / 2**20:.1f} MiB; "
        f"{args.repeats} renders"
    )
    print(
        f"  wall {statistics.median(walls):.1f} s (range {min(walls):.1f}–{max(walls):.1f}), "
        f"CPU {statistics.median(cpus):.1f} s (range {min(cpus):.1f}–{max(cpus):.1f})"
    )


if __name__ == "__main__":
    main()
