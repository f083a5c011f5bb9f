"""Curvature benchmarks: HVP flavours, λmax tracking overhead, warm vs cold Lanczos, other solvers.

Run ``python benchmarks/bench_curvature.py`` (about 2–3 minutes on a laptop CPU; ``--quick`` for a
smoke run). All ratios compare runs made in this one process on this machine. Set-up: the
papers' spiral (300 points, 3 classes), a width-100 ReLU MLP (603 parameters), DCE with A = 10,
T = 100, η = 1, float64, a 20-member ensemble.

1. Hessian-vector products: double backward through a gradient graph built once per step (what
   ``dlf.Curvature.hvp`` does) against torch.func forward-over-reverse (``jvp`` of ``grad``), on
   the whole ensemble at once and ``vmap``-ed over members.
2. Overhead of the lanczos analyzer, as wall time of a run with it over the same run without:
   λmax every step (k = 1) at the default tol and at 1e-2, and top-3 every 25 steps.
3. Matvecs per tracked step along one trajectory, warm-started (the shared helper) vs cold.
4. Accuracy and matvecs for the top-3 eigenvalues at a trained point against the dense Hessian:
   this Lanczos, scipy ``eigsh`` on a per-member ``LinearOperator`` of the same HVP, and power
   iteration with deflation at 100 iterations / tol 1e-3 (PyHessian's defaults).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch

import dlf
from dlf.curvature import fused_hvp
from dlf.curvature.helper import DEFAULT_TOL, Curvature
from dlf.engine.run import build_context
from dlf.hooks.manager import load_plugins
from dlf.numerics.schedules import triangle

MEMBERS, WIDTH, AMPLITUDE, PERIOD = 20, 100, 10.0, 100.0


def config(steps: int, analyzers: dict, root: str) -> dlf.RunConfig:
    return dlf.RunConfig.model_validate(
        {
            "name": "bench_curvature",
            "model": {"width": WIDTH, "dtype": "float64"},
            "loss": {"name": "dce"},
            "schedule": {"amplitude": AMPLITUDE, "period": PERIOD, "static_last_period": False},
            "train": {"steps": steps, "lr": 1.0, "seeds": MEMBERS, "eval_every": 10**6},
            "analyzers": analyzers,
            "output": {"root": root, "progress": "never", "checkpoint_seconds": 10**6},
        }
    )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gammas(steps: torch.Tensor) -> torch.Tensor:
    """Γ (S, M, C) of the benchmark's schedule."""
    amplitude = torch.full((MEMBERS,), AMPLITUDE, dtype=torch.float64)
    period = torch.full((MEMBERS,), PERIOD, dtype=torch.float64)
    return triangle(steps, amplitude, period, 3)


def trajectory(objective: dlf.Objective, theta: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """θ_t for t < steps of full-batch GD at η = 1 (the trainer's update)."""
    out, gamma = [], gammas(torch.arange(steps))
    for t in range(steps):
        out.append(theta)
        theta = theta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(theta, gamma[t]).sum(), theta)
        theta = (theta - grad).detach()
    return out


# --- 1. HVP flavours -----------------------------------------------------------------------------


def bench_hvp(
    objective: dlf.Objective, theta: torch.Tensor, gamma: torch.Tensor, reps: int
) -> tuple[str, float, float]:
    """The table, and the double-backward graph build and per-HVP costs in ms."""
    v = torch.randn_like(theta)

    def summed(t: torch.Tensor) -> torch.Tensor:
        return objective(t, gamma).sum()

    def func_summed() -> torch.Tensor:
        return torch.func.jvp(torch.func.grad(summed), (theta,), (v,))[1]

    def single(row: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return objective(row[None], g[None])[0]

    def func_vmap() -> torch.Tensor:
        def one(row, g, w):
            return torch.func.jvp(lambda r: torch.func.grad(single)(r, g), (row,), (w,))[1]

        return torch.func.vmap(one)(theta, gamma, v)

    curvature = Curvature(objective)
    reference = curvature.at(0, theta, gamma).hvp(v)
    for fn in (func_summed, func_vmap):
        torch.testing.assert_close(fn(), reference)

    def double_backward(n: int) -> None:
        curvature.at(-1, theta, gamma)
        curvature.at(0, theta, gamma)  # a fresh step: the graph is rebuilt
        for _ in range(n):
            curvature.hvp(v)

    def repeat(fn: Callable[[], torch.Tensor]) -> Callable[[int], object]:
        return lambda n: [fn() for _ in range(n)]

    lines = ["1. Hessian-vector products, 20 members at once (ms, best of repeats)"]
    lines.append(f"   {'method':44s} {'1 HVP':>8s} {'4 HVPs':>8s}")
    rows = [
        ("double backward, graph built once per step", double_backward),
        (
            "torch.func jvp(grad) on the summed ensemble",
            lambda n: [func_summed() for _ in range(n)],
        ),
        ("torch.func vmap over members of jvp(grad)", lambda n: [func_vmap() for _ in range(n)]),
    ]
    costs = []
    for name, fn in rows:
        one = best_time(lambda fn=fn: fn(1), reps) * 1e3
        four = best_time(lambda fn=fn: fn(4), reps) * 1e3
        lines.append(f"   {name:44s} {one:8.2f} {four:8.2f}")
        costs.append((one, four))
    one, four = costs[0]
    per_hvp = (four - one) / 3
    graph = one - per_hvp
    lines.append(f"   double backward: graph build {graph:.2f} ms, then {per_hvp:.2f} ms per HVP")
    return "\n".join(lines), graph, per_hvp


# --- 2. overhead of tracking λmax every step -----------------------------------------------------


def bench_overhead(steps: int, graph_ms: float, hvp_ms: float) -> str:
    settings = [
        ("every step, k=1, autograd HVP, full solves", {"every": 1, "k": 1, "track": False}),
        ("every step, k=1, fused HVP, full solves", {"every": 1, "k": 1, "track": False}),
        ("every step, k=1, tol 1e-3 (default: tracker)", {"every": 1, "k": 1}),
        ("every step, k=1, tol 1e-2 (tracker)", {"every": 1, "k": 1, "tol": 1e-2}),
        ("every 25 steps, k=3 (the papers' cadence)", {"every": 25, "k": 3}),
    ]
    lines = [
        f"2. Overhead of the lanczos analyzer, {MEMBERS} members, {steps} steps "
        "(ratio = wall time with / without; target for λmax every step <= 2.5x)",
        f"   {'setting':42s} {'ratio':>6s} {'matvecs':>8s} {'ms/tracked step':>16s} {'floor':>6s}",
    ]
    with tempfile.TemporaryDirectory() as root:
        dlf.execute(config(5, {"lanczos": {"k": 1}}, root), trace_path=Path(root) / "w.nc")
        plain = config(steps, {}, root)
        t_plain = best_time(lambda: dlf.execute(plain, trace_path=Path(root) / "p.nc"), 2)
        lines.append(
            f"   without analyzer: {t_plain:.2f} s = {t_plain / steps * 1e3:.2f} ms per step"
        )
        supports = fused_hvp.supports
        for name, options in settings:
            if "autograd" in name:  # force the curvature helper's fallback (the old path)
                fused_hvp.supports = lambda objective: False
            start = time.perf_counter()
            result = dlf.execute(
                config(steps, {"lanczos": options}, root), trace_path=Path(root) / "t.nc"
            )
            t_tracked = time.perf_counter() - start
            fused_hvp.supports = supports
            counts = dlf.open_trace(result.path).lanczos_matvecs.values
            matvecs = counts[:, 1:].mean() if counts.shape[1] > 1 else counts.mean()
            tracked = steps // options["every"]
            extra = (t_tracked - t_plain) / tracked * 1e3
            floor = graph_ms + matvecs * hvp_ms  # graph build + HVPs, nothing else
            ratio = t_tracked / t_plain
            lines.append(f"   {name:42s} {ratio:5.2f}x {matvecs:8.2f} {extra:16.2f} {floor:6.1f}")
    lines.append(
        "   (matvecs: mean per tracked step after the first; floor: graph + matvecs × HVP, ms)"
    )
    return "\n".join(lines)


# --- 3. warm vs cold start along a trajectory ----------------------------------------------------


def bench_warm_cold(
    objective: dlf.Objective,
    thetas: list[torch.Tensor],
    every: int,
    k: int,
    exact: dict,
    tol: float = DEFAULT_TOL,
) -> str:
    """Warm (shared helper) vs cold solves at every ``every``-th step; errors against dense
    eigvalsh at steps that are multiples of 25 (cached in ``exact`` across calls)."""
    shared = Curvature(objective)
    gamma = gammas(torch.arange(len(thetas)))
    warm, cold, warm_err, cold_err = [], [], [0.0], [0.0]
    for t in range(0, len(thetas), every):
        w = shared.at(t, thetas[t], gamma[t]).spectrum(k, tol=tol)
        c = Curvature(objective, seed=t + 1).at(t, thetas[t], gamma[t]).spectrum(k, tol=tol)
        if t == 0:  # a cold start for both
            continue
        warm.append(w.matvecs.double().mean().item())
        cold.append(c.matvecs.double().mean().item())
        if t % 25 == 0:
            if t not in exact:
                dense = Curvature(objective).at(t, thetas[t], gamma[t]).dense_hessian()
                exact[t] = torch.linalg.eigvalsh(dense).flip(-1)
            ref = exact[t][:, :k]
            warm_err.append(((w.values - ref).abs() / ref.abs()).max().item())
            cold_err.append(((c.values - ref).abs() / ref.abs()).max().item())
    return (
        f"   every {every:3d} steps, k={k}, tol {tol:g}: warm {np.mean(warm):6.2f}  "
        f"cold {np.mean(cold):6.2f}"
        f"   max rel error vs dense: warm {max(warm_err):.1e}, cold {max(cold_err):.1e}"
    )


# --- 4. against scipy eigsh and power iteration --------------------------------------------------


def power_iteration(curvature: Curvature, k: int, iters: int = 100, tol: float = 1e-3):
    """PyHessian-style: per eigenvalue, power iteration deflated against the found vectors."""
    theta = curvature.theta
    gen = torch.Generator().manual_seed(0)
    found: list[torch.Tensor] = []
    values, matvecs = [], torch.zeros(theta.shape[0])
    for _ in range(k):
        v = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        v = v / v.norm(dim=-1, keepdim=True)
        value = torch.zeros(theta.shape[0], dtype=theta.dtype)
        active = torch.ones(theta.shape[0], dtype=torch.bool)
        for _ in range(iters):
            for u in found:
                v = v - (v * u).sum(-1, keepdim=True) * u
            hv = curvature.hvp(v)
            matvecs += active
            new = (hv * v).sum(-1)
            converged = (new - value).abs() / (value.abs() + 1e-6) < tol
            value = torch.where(active, new, value)
            v = torch.where(active[:, None], hv / hv.norm(dim=-1, keepdim=True), v)
            active = active & ~converged
            if not bool(active.any()):
                break
        found.append(v)
        values.append(value)
    return torch.stack(values, dim=1), matvecs


def scipy_eigsh(curvature: Curvature, k: int, tol: float):
    """eigsh(which='LA') per member on a LinearOperator applying that member's HVP."""
    theta = curvature.theta
    values, matvecs = [], []
    for m in range(theta.shape[0]):
        single = Curvature(curvature.objective).at(0, theta[m : m + 1], curvature.gamma[m : m + 1])
        count = 0

        def apply(x: np.ndarray, single: Curvature = single) -> np.ndarray:
            nonlocal count
            count += 1
            v = torch.as_tensor(np.asarray(x).reshape(1, -1), dtype=theta.dtype)
            return single.hvp(v)[0].numpy()

        n = theta.shape[1]
        operator = sla.LinearOperator((n, n), matvec=apply, dtype=np.float64)
        v0 = np.random.default_rng(m).standard_normal(n)
        found = sla.eigsh(operator, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
        values.append(np.sort(found)[::-1].copy())
        matvecs.append(count)
    return torch.tensor(np.array(values)), torch.tensor(matvecs, dtype=torch.float64)


def bench_solvers(objective: dlf.Objective, thetas: list[torch.Tensor], members: int) -> str:
    t = len(thetas) - 1
    theta = thetas[t][:members]
    gamma = gammas(torch.tensor([t]))[0][:members]
    curvature = Curvature(objective).at(t, theta, gamma)
    exact = torch.linalg.eigvalsh(curvature.dense_hessian()).flip(-1)[:, :3]

    def row(name: str, values: torch.Tensor, matvecs: torch.Tensor) -> str:
        error = ((values - exact).abs() / exact.abs()).max().item()
        return f"   {name:40s} {error:12.1e} {matvecs.double().mean().item():9.1f}"

    lines = [
        f"4. Top-3 eigenvalues at step {t}, {members} members, against dense eigvalsh",
        f"   {'solver':40s} {'max rel err':>12s} {'matvecs':>9s}",
    ]
    for tol in (DEFAULT_TOL, 1e-8):
        fresh = Curvature(objective).at(t, theta, gamma).spectrum(3, tol=tol)
        lines.append(row(f"this Lanczos, cold, tol {tol:g}", fresh.values, fresh.matvecs))
    warm_helper = Curvature(objective)
    warm_helper.at(t - 1, thetas[t - 1][:members], gammas(torch.tensor([t - 1]))[0][:members])
    warm_helper.spectrum(3)
    warm = warm_helper.at(t, theta, gamma).spectrum(3)
    lines.append(
        row(f"this Lanczos, warm from step {t - 1}, tol {DEFAULT_TOL:g}", warm.values, warm.matvecs)
    )
    for tol in (DEFAULT_TOL, 0.0):
        values, matvecs = scipy_eigsh(curvature, 3, tol)
        lines.append(row(f"scipy eigsh (ARPACK), tol {tol:g}", values, matvecs))
    values, matvecs = power_iteration(curvature, 3)
    lines.append(row("power iteration + deflation, 100 / 1e-3", values, matvecs))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--overhead-only", action="store_true", help="sections 1 and 2 only")
    args = parser.parse_args()
    overhead_steps, track_steps, reps, members = (25, 26, 1, 2) if args.quick else (600, 201, 5, 5)

    cfg = config(1, {}, tempfile.gettempdir())
    run = build_context(cfg, load_plugins(), dlf.config.members_of(cfg))
    objective = run.objective
    theta0 = run.model.init(range(MEMBERS))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    table, graph_ms, hvp_ms = bench_hvp(objective, theta0, gammas(torch.tensor([0]))[0], reps)
    print(table, flush=True)
    print(bench_overhead(overhead_steps, graph_ms, hvp_ms), flush=True)
    if args.overhead_only:
        return
    thetas = trajectory(objective, theta0, track_steps)
    exact: dict[int, torch.Tensor] = {}
    print("3. Mean matvecs per tracked step along one trajectory, warm vs cold start")
    print(bench_warm_cold(objective, thetas, 1, 1, exact), flush=True)
    print(bench_warm_cold(objective, thetas, 1, 1, exact, tol=1e-2), flush=True)
    print(bench_warm_cold(objective, thetas, 25, 3, exact), flush=True)
    print(bench_solvers(objective, thetas, members), flush=True)


if __name__ == "__main__":
    main()
