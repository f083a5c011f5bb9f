"""Training throughput: the ensemble trainer against a naive per-seed loop and the machine's peak.

Run ``python benchmarks/bench_training.py`` (a few minutes on a 2-core CPU; ``--quick`` for a smoke
run; ``--device cuda`` on a GPU; ``--threads N`` sets torch's thread count, which the C kernel
uses too). Every number comparing two variants comes from this one process, the variants
interleaved round by round and the best round of each kept. On a machine shared with other work
``--threads 1 --clock cpu`` (CPU seconds instead of wall seconds) keeps the ratios steady.
Set-up throughout: the papers' spiral (300 points, 3 classes), a ReLU MLP 2 → width → 3, DCE with
A = 10, T = 100, η = 1, full-batch gradient descent.

1. Member-steps per second of the toolkit's trainer (``dlf.execute``: 50 members, trace recorded
   every step, validation every 100) against a naive loop (one ``torch.nn.Module`` per seed,
   ``torch.optim.SGD``, the same Γ schedule and loss, nothing recorded), width 100 and 1000,
   float32 and float64. The naive loop's final parameters are checked against the trainer's.
2. The same throughput as a fraction of the peak FLOP/s of a large matrix product measured here,
   counting 3 × the forward pass's matrix-product FLOPs per member-step.
   "ways": the step alone (F and ∂F/∂θ, 50 members) by each path in ``dlf.engine.gradients``:
   autograd, the fused torch pass, the compiled C kernel (CPU).
3. Overheads over the bare loop (the same step, divergence check and update, nothing else): the
   trainer's event system with nothing to record or call, trace recording (every step, validation
   every 100 steps), and each installed analyzer at its default options (lanczos and ntk at the
   papers' cadence, every 25 steps; landscape one 41 × 41 slice).
4. The 2021 Fig. 3 narrow-network phase diagram (width 100, 35 000 steps, 50 seeds × 10 × 10
   (T, A) points = 5 000 members) projected from a measured slice: 500 members on a CPU (the
   diagram as ten such runs), all 5 000 in one run on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import dlf
from dlf.config import members_of
from dlf.engine.gradients import (
    AutogradGradient,
    FusedGradient,
    Gradient,
    KernelGradient,
    gradient_for,
    kernel_function,
)
from dlf.engine.run import build_context
from dlf.hooks.manager import load_plugins, plugins_with
from dlf.numerics.schedules import triangle

AMPLITUDE, PERIOD, SAMPLES, CLASSES = 10.0, 100.0, 300, 3
FIG3_MEMBERS, FIG3_STEPS = 5000, 35000
KERNEL_ORDER = ("autograd", "fused", "kernel")
RESULTS = Path(__file__).parent / "results" / "training.txt"


def config(width: int, dtype: str, members: int, steps: int, root: str, **train) -> dlf.RunConfig:
    """The benchmark run: ``members`` seeds of the papers' set-up (Γ oscillating throughout)."""
    raw = {
        "name": "bench_training",
        "model": {"width": width, "dtype": dtype, "device": DEVICE},
        "loss": {"name": "dce"},
        "schedule": {"amplitude": AMPLITUDE, "period": PERIOD, "static_last_period": False},
        "train": {"steps": steps, "lr": 1.0, "seeds": members, **train},
        "output": {"root": root, "progress": "never", "checkpoint_seconds": 10**6},
    }
    return dlf.RunConfig.model_validate(raw)


def clock() -> float:
    """Wall-clock seconds, or with ``--clock cpu`` this process's CPU seconds (all threads):
    steadier on a machine shared with other work, but spinning threads count."""
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


class Stopwatch:
    """A plugin timing the training loop itself: from ``dlf_run_start`` to ``dlf_run_end``."""

    seconds = 0.0

    @dlf.hookimpl
    def dlf_run_start(self, run: dlf.RunContext) -> None:
        sync()
        self._start = clock()

    @dlf.hookimpl
    def dlf_run_end(self, run: dlf.RunContext) -> None:
        sync()
        self.seconds = clock() - self._start


def trainer_seconds(cfg: dlf.RunConfig, root: str) -> tuple[float, torch.Tensor]:
    """Seconds of ``dlf.execute``'s training loop, and the final parameters."""
    watch = Stopwatch()
    plugins = plugins_with([watch], cfg.plugins)  # a manager of its own: the shared one stays
    result = dlf.execute(cfg, trace_path=Path(root) / "trace.nc", plugins=plugins)
    return watch.seconds, result.theta


def bare_seconds(cfg: dlf.RunConfig) -> float:
    """The same mathematics as the trainer with nothing else: fused step, divergence, update."""
    run = build_context(cfg, load_plugins(), members_of(cfg))
    obj = run.objective
    theta = run.model.init([m.seed for m in run.members], "standard", run.dtype, run.device)
    steps = torch.arange(run.total_steps, device=run.device)
    gammas = triangle(steps, run.amplitude, run.period, CLASSES)
    gradient = gradient_for(obj)
    active = torch.ones(run.n_members, dtype=torch.bool, device=run.device)
    limit = cfg.train.diverge_above
    sync()
    start = clock()
    for t in range(run.total_steps):
        loss, grad = gradient(theta, gammas[t], active, obj.x, obj.y)
        active = active & (loss <= limit)
        theta = torch.where(active[:, None], theta - run.lr[:, None] * grad, theta)
    sync()
    return clock() - start


def naive(width: int, dtype: torch.dtype, seeds: int, steps: int) -> tuple[float, torch.Tensor]:
    """One ``nn.Module`` and ``optim.SGD`` per seed, trained one after another (DCE, full batch).

    Starts from the same parameters as the toolkit's members; returns seconds spent training and
    the final parameters flattened as the toolkit stores them.
    """
    data = dlf.numerics.data.spiral(dlf.numerics.data.SpiralOptions())
    x = torch.as_tensor(data.x_train, dtype=dtype, device=DEVICE)
    y = torch.as_tensor(data.y_train, device=DEVICE)
    model = dlf.numerics.models.MLP(2, (width,), CLASSES)
    theta0 = model.init(range(seeds), "standard", dtype, DEVICE)
    period = torch.tensor([PERIOD], dtype=dtype, device=DEVICE)
    amplitude = torch.tensor([AMPLITUDE], dtype=dtype, device=DEVICE)
    gammas = triangle(torch.arange(steps, device=DEVICE), amplitude, period, CLASSES)[:, 0]
    finals, seconds = [], 0.0
    for seed in range(seeds):
        net = torch.nn.Sequential(
            torch.nn.Linear(2, width), torch.nn.ReLU(), torch.nn.Linear(width, CLASSES)
        ).to(dtype=dtype, device=DEVICE)
        with torch.no_grad():
            (w1, b1), (w2, b2) = model.unflatten(theta0[seed])
            for layer, (w, b) in zip((net[0], net[2]), ((w1, b1), (w2, b2)), strict=True):
                layer.weight.copy_(w.T)
                layer.bias.copy_(b)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        sync()
        start = clock()
        for t in range(steps):
            loss = (gammas[t][y] * F.cross_entropy(net(x), y, reduction="none")).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        seconds += clock() - start
        w1, b1, w2, b2 = (p.detach() for p in net.parameters())
        finals.append(torch.cat([w1.T.flatten(), b1, w2.T.flatten(), b2]))
    return seconds, torch.stack(finals)


def peak_flops(dtype: torch.dtype, n: int) -> float:
    """FLOP/s of an ``n × n`` matrix product (best of several), the machine's practical peak."""
    a = torch.randn(n, n, dtype=dtype, device=DEVICE)
    b = torch.randn(n, n, dtype=dtype, device=DEVICE)
    best = float("inf")
    for _ in range(5):
        sync()
        start = clock()
        torch.mm(a, b)
        sync()
        best = min(best, clock() - start)
    return 2 * n**3 / best


def flops_per_member_step(width: int) -> int:
    """3 × the forward pass's matrix-product FLOPs (forward + backward ≈ 3 forwards)."""
    return 3 * 2 * SAMPLES * (2 * width + width * CLASSES)


def best_of(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Shortest time of each variant over ``rounds`` rounds, the variants interleaved."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, measure in variants.items():
            best[name] = min(best[name], measure())
    return best


def compare_with_naive(
    width: int, dtype_name: str, steps: int, naive_steps: int, rounds: int, root: str
) -> dict[str, float]:
    """Seconds per member-step of the trainer (50 members) and of the naive loop (2 seeds)."""
    dtype, members, seeds = getattr(torch, dtype_name), 50, 2
    cfg = config(width, dtype_name, members, steps, root)
    finals = {}

    def run_naive() -> float:
        return naive(width, dtype, seeds, naive_steps)[0] / (seeds * naive_steps)

    def run_trainer() -> float:
        return trainer_seconds(cfg, root)[0] / (members * steps)

    best = best_of(rounds, {"naive": run_naive, "trainer": run_trainer})
    # the naive loop does the toolkit's mathematics: its seeds end where the members do (float32
    # rounding grows along these chaotic trajectories, so float32 is compared early on)
    check_steps, tol = (naive_steps, 1e-8) if dtype == torch.float64 else (20, 1e-4)
    _, finals["naive"] = naive(width, dtype, seeds, check_steps)
    _, finals["trainer"] = trainer_seconds(
        config(width, dtype_name, seeds, check_steps, root), root
    )
    torch.testing.assert_close(finals["naive"], finals["trainer"], rtol=tol, atol=tol)
    return best


def throughput(args: argparse.Namespace, root: str, out: Callable[[str], None]) -> None:
    out("1-2. member-steps/s: trainer (50 members) vs naive per-seed loop; fraction of peak")
    out(
        f"{'width':>5} {'dtype':>7} {'naive':>9} {'trainer':>9} {'ratio':>7} "
        f"{'GFLOP/s':>8} {'peak':>8} {'of peak':>7}"
    )
    for width, steps, naive_steps in ((100, 300, 300), (1000, 40, 100)):
        steps, naive_steps = max(steps // args.scale, 10), max(naive_steps // args.scale, 10)
        for dtype_name in ("float32", "float64"):
            best = compare_with_naive(width, dtype_name, steps, naive_steps, args.rounds, root)
            rate = {k: 1 / v for k, v in best.items()}
            peak = peak_flops(getattr(torch, dtype_name), 2048 if DEVICE == "cpu" else 8192)
            flops = rate["trainer"] * flops_per_member_step(width)
            out(
                f"{width:>5} {dtype_name:>7} {rate['naive']:>9.0f} {rate['trainer']:>9.0f} "
                f"{rate['trainer'] / rate['naive']:>6.1f}x {flops / 1e9:>8.2f} "
                f"{peak / 1e9:>8.1f} {flops / peak:>6.1%}"
            )


def step_rates(width: int, dtype_name: str, repeat: int, rounds: int, root: str) -> dict:
    """Member-steps/s of the step alone (F and ∂F/∂θ of 50 members) by each implementation."""
    members = 50
    cfg = config(width, dtype_name, members, 1, root)
    run = build_context(cfg, load_plugins(), members_of(cfg))
    obj = run.objective
    theta = run.model.init(range(members), "standard", run.dtype, run.device)
    gamma = torch.ones(members, CLASSES, dtype=run.dtype, device=run.device)
    active = torch.ones(members, dtype=torch.bool, device=run.device)
    variants: dict[str, Gradient] = {"autograd": AutogradGradient(obj), "fused": FusedGradient(obj)}
    function = kernel_function(run.dtype) if KernelGradient.supports(obj) else None
    if function is not None:
        variants["kernel"] = KernelGradient(obj, function)

    def timed(gradient: Gradient) -> float:
        sync()
        start = clock()
        for _ in range(repeat):
            gradient(theta, gamma, active, obj.x, obj.y)
        sync()
        return (clock() - start) / (repeat * members)

    best = best_of(rounds, {name: functools.partial(timed, g) for name, g in variants.items()})
    return {name: 1 / seconds for name, seconds in best.items()}


def ways(args: argparse.Namespace, root: str, out: Callable[[str], None]) -> None:
    out("\nways: one step of 50 members (F and gradient only), member-steps/s")
    out(f"{'width':>5} {'dtype':>7} " + " ".join(f"{name:>9}" for name in KERNEL_ORDER))
    for width, repeat in ((100, 20), (1000, 5)):
        for dtype_name in ("float32", "float64"):
            rate = step_rates(width, dtype_name, max(repeat // args.scale, 2), args.rounds, root)
            cells = [f"{rate[k]:>9.0f}" if k in rate else f"{'-':>9}" for k in KERNEL_ORDER]
            out(f"{width:>5} {dtype_name:>7} {' '.join(cells)}")


def overheads(args: argparse.Namespace, root: str, out: Callable[[str], None]) -> None:
    members, steps, dtype = 50, max(200 // args.scale, 50), args.overhead_dtype
    out(f"\n3. overheads over the bare loop (width 100, {members} members, {steps} steps, {dtype})")
    installed = set(load_plugins().registries.analyzers)
    analyzer_options = {
        "lanczos": {"every": 25},
        "ntk": {"every": 25},
        "bifurcation": {},
        "landscape": {"steps": [steps // 2]},
    }
    quiet = {"record_every": steps, "eval_every": steps}
    variants: dict[str, Callable[[], float]] = {
        "bare loop": lambda: bare_seconds(config(100, dtype, members, steps, root)),
        "events, nothing due": lambda: trainer_seconds(
            config(100, dtype, members, steps, root, **quiet), root
        )[0],
        "recording (default)": lambda: trainer_seconds(
            config(100, dtype, members, steps, root), root
        )[0],
    }
    calls = {"lanczos": -(-steps // 25), "ntk": -(-steps // 25), "bifurcation": steps}
    failures: dict[str, str] = {}

    def with_analyzer(name: str, options: dict) -> float:
        cfg = config(100, dtype, members, steps, root).model_copy(
            update={"analyzers": {name: options}}
        )
        try:
            return trainer_seconds(cfg, root)[0]
        except Exception as exc:  # another engineer's plugin failing must not end the benchmark
            failures[name] = f"{type(exc).__name__}: {exc}"[:200]
            return float("inf")

    labels = {}
    for name, options in analyzer_options.items():
        if name in installed:
            labels[f"+ {name} {options}"] = name
            variants[f"+ {name} {options}"] = functools.partial(with_analyzer, name, options)
    best = best_of(args.rounds, variants)
    bare, recording = best["bare loop"], best["recording (default)"]
    out(f"{'variant':<42} {'ms/step':>8} {'vs bare':>8} {'ms/call':>8}")
    for label, seconds in best.items():
        name = labels.get(label)
        if name in failures:
            out(f"{label:<42} failed: {failures[name]}")
            continue
        per_call = ""
        if name is not None:
            per_call = f"{1e3 * (seconds - recording) / calls.get(name, 1):>8.2f}"
        out(f"{label:<42} {1e3 * seconds / steps:>8.3f} {seconds / bare - 1:>+8.1%} {per_call}")


def fig3(args: argparse.Namespace, root: str, out: Callable[[str], None]) -> None:
    """A CPU runs the diagram as ten runs of 500 members, a GPU as one run of all of them."""
    members, steps = (500 if DEVICE == "cpu" else FIG3_MEMBERS), max(100 // args.scale, 20)
    out(
        f"\n4. 2021 Fig. 3 (width 100, {FIG3_STEPS} steps, {FIG3_MEMBERS} members) projected "
        f"from {members} members x {steps} steps, trace recorded every step"
    )
    for dtype in ("float32", "float64"):
        cfg = config(100, dtype, members, steps, root)
        seconds = best_of(args.rounds, {"slice": lambda cfg=cfg: trainer_seconds(cfg, root)[0]})
        rate = members * steps / seconds["slice"]
        hours = FIG3_MEMBERS * FIG3_STEPS / rate / 3600
        out(f"{dtype:>8}: {rate:>9.0f} member-steps/s -> {hours:5.2f} h")


def common_options(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every benchmark here takes: torch's threads, the clock, the results file."""
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="see clock()")
    parser.add_argument("--out", type=Path, default=results, help="where the results go")


class Results:
    """Lines printed as they come and written together to the results file by :meth:`save`."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines = path, []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")


def main() -> None:
    global DEVICE, CLOCK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps, one round")
    parser.add_argument("--overhead-dtype", default="float32", choices=["float32", "float64"])
    common_options(parser, RESULTS)
    args = parser.parse_args()
    DEVICE, CLOCK = args.device, args.clock
    args.scale, args.rounds = (5, 1) if args.quick else (1, 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Results(args.out)
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu"
    out(
        f"bench_training ({'quick' if args.quick else 'default'}): {DEVICE} {name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {CLOCK} clock, python "
        f"{sys.version.split()[0]}"
    )
    kernels = {d: kernel_function(getattr(torch, d)) is not None for d in ("float32", "float64")}
    if DEVICE == "cpu":
        built = [d for d, ok in kernels.items() if ok]
        out(f"C kernel: {'built for ' + ', '.join(built) if built else 'not available'}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        throughput(args, root, out)
        ways(args, root, out)
        overheads(args, root, out)
        fig3(args, root, out)
    out(f"\ntotal {time.perf_counter() - start:.0f} s wall")
    out.save()


DEVICE, CLOCK = "cpu", "wall"

if __name__ == "__main__":
    main()
