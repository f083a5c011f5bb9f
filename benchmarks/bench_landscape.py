"""Landscape slicer: grid evaluations per second, F(θ + a·d₁ + b·d₂; Γ) on the spiral (P = 300).

For width 100 and 1000 (float64, CPU unless --device): a 41 × 41 slice with the default chunk
(sized to 64 MiB of activations) and with chunks 4× the default (4× the memory), against one grid
point per forward pass (timed on a 15 × 15 grid to keep the run short), all in this run. Run:

    python benchmarks/bench_landscape.py > benchmarks/results/landscape.txt
"""

from __future__ import annotations

import argparse
import time

import torch
from dlf_landscape.grid import evaluate_plane, rows_per_chunk

from dlf.numerics.data import SpiralOptions, spiral
from dlf.numerics.losses import BUILTIN_LOSSES
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

GRID = 41
SMALL_GRID = 15  # for one point per pass, which is slow


def objective_for(width: int, device: str) -> Objective:
    data = spiral(SpiralOptions())
    loss = {loss.name: loss for loss in BUILTIN_LOSSES}
    x = torch.tensor(data.x_train, dtype=torch.float64, device=device)
    y = torch.tensor(data.y_train, device=device)
    return Objective(MLP(2, (width,), 3), loss["dce"], loss["ce"], x, y)


def evaluations_per_second(objective: Objective, grid: int, chunk: int, repeats: int) -> float:
    device = objective.x.device
    center = objective.model.init([0], device=device)[0]
    directions = torch.randn(2, len(center), dtype=torch.float64, device=device)
    gamma = torch.tensor([40.0, 0.5, 0.5], dtype=torch.float64, device=device)
    coords = torch.linspace(-1, 1, grid, dtype=torch.float64, device=device)

    def one() -> None:
        evaluate_plane(objective, center, directions, gamma, coords, chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        one()
    return repeats * grid * grid / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"landscape grid evaluations per second (spiral P=300, float64, {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats)"
    )
    print(f"{'width':>6} {'grid':>6} {'chunk':>14} {'evals/s':>10} {'41x41 s':>8}")
    for width in (100, 1000):
        objective = objective_for(width, args.device)
        auto = rows_per_chunk(objective)
        cases = ((GRID, f"{auto} (default)", auto), (GRID, f"{4 * auto} (4x)", 4 * auto))
        for grid, label, chunk in (*cases, (SMALL_GRID, "1", 1)):
            rate = evaluations_per_second(objective, grid, chunk, args.repeats)
            print(f"{width:>6} {grid:>6} {label:>14} {rate:>10.0f} {GRID * GRID / rate:>8.2f}")


if __name__ == "__main__":
    main()
