"""Curvature benchmarks: HVP paths, λmax tracking overhead, warm vs cold, other solvers, the NTK.

Run ``python benchmarks/bench_curvature.py`` (``--quick`` for a smoke run; ``--threads 1 --clock
cpu`` on a shared machine, where torch's second thread spins and wall times mean little). All
ratios compare runs made in this one process, interleaved and repeated (median). Set-up: the
papers' spiral (300 points, 3 classes), ReLU MLPs of width 100 (603 parameters) and 1000, DCE with
A = 10, T = 100, η = 1, float64, 20 members.

1. One Hessian-vector product of all members against one training step (the C gradient kernel):
   the C HVP kernel, the fused torch R-operator, autograd's double backward.
2. Overhead of the lanczos analyzer: run time with it over the same run without. λmax every step
   (k = 1: the tracker at tol 1e-3 and 1e-2, and full warm solves), top-3 every 25 steps; width
   100 and 1000.
3. Matvecs per tracked step along one trajectory, warm-started (the shared helper) vs cold.
4. Top-3 eigenvalues at a trained point, per member, against dense eigvalsh: this Lanczos;
   PyHessian's power iteration (the ``pyhessian`` package, float64); ``curvlinops``' Hessian
   operator with scipy ``eigsh`` — both installed for the benchmark only (``pip install
   --no-deps pyhessian curvlinops-for-pytorch einops einconv backpack-for-pytorch linear_operator
   opt-einsum``), never as dependencies.
5. NTK top eigenvalue: dense Gram against warm-started Lanczos.
6. What one product per member per step can certify along the trajectory (issue 14's floor):
   from the previous step's power-stepped vector, the share of member-steps whose residual meets
   the full solve's test, and the share whose eigenvalue error is certified ≤ 1e-3 by the
   Kato–Temple bound ε²/(θ − λ₂) (λ₂ of the previous step), against an accurate reference.
7. Adaptive cadence on the 2021 Fig. 4 run (one member, width 100, A = 70, T = 5000, η = 1,
   70 000 steps; ``--fig4-steps`` shortens it): training with the bifurcation detector alone
   against the same with the lanczos analyzer at ``cadence: adaptive`` (k = 1, sparse every 25),
   interleaved; whether every step in the band was sampled and each crossing resolved to the
   step; the sampled λmax against dense ``eigvalsh`` (the analyzer's exact mode, torch.func's
   Hessian) at sampled steps of the same trajectory, and whether λmax ∈ [λ, λ + error_bound].
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch
import torch.nn.functional as F

import dlf
from dlf.curvature import fused_hvp, kernel_hvp, lanczos, ntk
from dlf.curvature.helper import DEFAULT_TOL, Curvature
from dlf.engine.gradients import gradient_for
from dlf.engine.run import build_context
from dlf.hooks.manager import load_plugins
from dlf.numerics.schedules import triangle

MEMBERS, WIDTH, AMPLITUDE, PERIOD = 20, 100, 10.0, 100.0
CLOCK: Callable[[], float] = time.perf_counter


def config(steps: int, analyzers: dict, root: str, width: int = WIDTH) -> dlf.RunConfig:
    return dlf.RunConfig.model_validate(
        {
            "name": "bench_curvature",
            "model": {"width": width, "dtype": "float64"},
            "loss": {"name": "dce"},
            "schedule": {"amplitude": AMPLITUDE, "period": PERIOD, "static_last_period": False},
            "train": {"steps": steps, "lr": 1.0, "seeds": MEMBERS, "eval_every": 10**6},
            "analyzers": analyzers,
            "output": {"root": root, "progress": "never", "checkpoint_seconds": 10**6},
        }
    )


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function over ``repeats`` rounds that call each once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = CLOCK()
            fn()
            times[name].append(CLOCK() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def gammas(steps: torch.Tensor) -> torch.Tensor:
    """Γ (S, M, C) of the benchmark's schedule."""
    amplitude = torch.full((MEMBERS,), AMPLITUDE, dtype=torch.float64)
    period = torch.full((MEMBERS,), PERIOD, dtype=torch.float64)
    return triangle(steps, amplitude, period, 3)


def objective_of(width: int) -> tuple[dlf.Objective, torch.Tensor]:
    cfg = config(1, {}, tempfile.gettempdir(), width)
    run = build_context(cfg, load_plugins(), dlf.config.members_of(cfg))
    return run.objective, run.model.init(range(MEMBERS))


def trajectory(objective: dlf.Objective, theta: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """θ_t for t < steps of full-batch GD at η = 1 (the trainer's update)."""
    out, gamma, gradient = [], gammas(torch.arange(steps)), gradient_for(objective)
    active = torch.ones(theta.shape[0], dtype=torch.bool)
    for t in range(steps):
        out.append(theta)
        _, grad = gradient(theta, gamma[t], active, objective.x, objective.y)
        theta = theta - grad
    return out


# --- 1. one HVP against one training step --------------------------------------------------------


def bench_hvp(width: int, repeats: int) -> str:
    objective, theta = objective_of(width)
    gamma = gammas(torch.tensor([0]))[0]
    v = torch.randn_like(theta)
    gradient = gradient_for(objective)
    active = torch.ones(MEMBERS, dtype=torch.bool)
    curvature = Curvature(objective).at(0, theta, gamma)
    reference = curvature.autograd_hvp(v)
    kernel = kernel_hvp.KernelHVP(objective, theta, gamma, static=False)
    fused = fused_hvp.FusedHVP(objective, theta, gamma, static=False)
    for product in (kernel, fused):
        torch.testing.assert_close(product(v), reference, rtol=0, atol=1e-12)

    def autograd_four() -> None:
        fresh = Curvature(objective).at(0, theta, gamma)  # the graph is built once per step
        for _ in range(4):
            fresh.autograd_hvp(v)

    t = interleaved(
        {
            f"training step ({gradient.name})": lambda: gradient(
                theta, gamma, active, objective.x, objective.y
            ),
            "C kernel HVP (mlp_hvp.c)": lambda: kernel_hvp.KernelHVP(
                objective, theta, gamma, False
            )(v),
            "fused torch R-operator HVP": lambda: fused_hvp.FusedHVP(
                objective, theta, gamma, False
            )(v),
            "autograd, 4 HVPs on one graph (per HVP)": autograd_four,
        },
        repeats,
    )
    t["autograd, 4 HVPs on one graph (per HVP)"] /= 4
    step = next(iter(t.values()))
    lines = [f"1. One HVP of {MEMBERS} members, width {width}, float64 (median of {repeats})"]
    lines += [f"   {name:42s} {s * 1e3:8.3f} ms  {s / step:6.2f}x a step" for name, s in t.items()]
    return "\n".join(lines)


# --- 2. overhead of the lanczos analyzer ---------------------------------------------------------


def bench_overhead(steps: int, width: int, settings: dict[str, dict], repeats: int) -> str:
    lines = [
        f"2. lanczos analyzer overhead, {MEMBERS} members, width {width}, {steps} steps "
        f"(wall-time ratio with / without, median of {repeats} interleaved; target <= 2.5x for "
        "λmax every step)",
        f"   {'setting':44s} {'ratio':>7s} {'matvecs/tracked step':>21s} (after the first)",
    ]
    with tempfile.TemporaryDirectory() as root:
        dlf.execute(config(5, {"lanczos": {"k": 1}}, root, width), trace_path=Path(root) / "w.nc")
        counts: dict[str, float] = {}

        def run(name: str, analyzers: dict) -> Callable[[], None]:
            def go() -> None:
                result = dlf.execute(
                    config(steps, analyzers, root, width), trace_path=Path(root) / f"{name}.nc"
                )
                if analyzers:
                    matvecs = dlf.open_trace(result.path).lanczos_matvecs.values
                    counts[name] = float(matvecs[:, 1:].mean() if matvecs.shape[1] > 1 else 0)

            return go

        fns = {"without": run("without", {})}
        fns.update({name: run(name, {"lanczos": opts}) for name, opts in settings.items()})
        t = interleaved(fns, repeats)
    lines.append(f"   without analyzer: {t['without'] / steps * 1e3:.3f} ms per step")
    for name in settings:
        lines.append(f"   {name:44s} {t[name] / t['without']:6.2f}x {counts[name]:21.2f}")
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


# --- 6. what one product per step can certify --------------------------------------------------


def bench_one_product(objective: dlf.Objective, thetas: list[torch.Tensor]) -> str:
    """Along ``thetas``: apply H once to last step's w/‖w‖ and see what that single product
    certifies, against top-2 pairs solved to 1e-10 from a random start at every step."""
    curvature, generator = Curvature(objective), torch.Generator().manual_seed(1)
    gamma = gammas(torch.arange(len(thetas)))
    v, lambda2, rows = None, None, []
    for t, theta in enumerate(thetas):
        at = curvature.at(t, theta, gamma[t])
        start = lanczos.random_vectors(tuple(theta.shape), theta, generator)
        ref = lanczos.top_eigenpairs(at.hvp, start, 2, 1e-10, 200, generator, 60)
        if v is not None:
            w = at.hvp(v)
            rayleigh = (v * w).sum(-1)
            residual = (w - rayleigh[:, None] * v).norm(dim=-1) / rayleigh.abs()
            gap = (rayleigh - lambda2).clamp_min(torch.finfo(w.dtype).tiny)
            bound = residual**2 * rayleigh.abs() / gap
            error = (ref.values[:, 0] - rayleigh) / ref.values[:, 0]
            rows.append(torch.stack([residual, bound, error], 1))
        v = w / w.norm(dim=-1, keepdim=True) if v is not None else ref.vectors[:, 0]
        lambda2 = ref.values[:, 1]
    residual, bound, error = torch.cat(rows).T
    certified = bound <= 1e-3
    wrong = int((error[certified] > 1e-3).sum())
    return "\n".join(
        [
            f"6. One product per member per step, {len(rows)} steps x {thetas[0].shape[0]} members",
            f"   relative residual: median {residual.median():.1e}, "
            f"share <= 1e-3 (the full solve's test) {(residual <= 1e-3).double().mean():.3f}, "
            f"<= 1e-2 {(residual <= 1e-2).double().mean():.3f}",
            f"   eigenvalue error certified <= 1e-3 by Kato-Temple: {certified.double().mean():.3f}"
            f" of member-steps; true error > 1e-3 among them: {wrong}",
            f"   true relative error of the single product: median {error.median():.1e}, "
            f"90th percentile {error.quantile(0.9):.1e}, max {error.max():.1e}",
        ]
    )


# --- 4. against PyHessian and curvlinops + eigsh -------------------------------------------------


def torch_module(objective: dlf.Objective, row: torch.Tensor) -> torch.nn.Module:
    """One member as an ``nn.Sequential`` (the layout PyHessian and curvlinops take)."""
    (w1, b1), (w2, b2) = objective.model.unflatten(row[None])
    net = torch.nn.Sequential(
        torch.nn.Linear(w1.shape[1], w1.shape[2]),
        torch.nn.ReLU(),
        torch.nn.Linear(w2.shape[1], w2.shape[2]),
    ).double()
    with torch.no_grad():
        for layer, (w, b) in zip((net[0], net[2]), ((w1, b1), (w2, b2)), strict=True):
            layer.weight.copy_(w[0].T)
            layer.bias.copy_(b[0])
    return net


class WeightedCE(torch.nn.Module):
    """DCE of one member, (1/P) Σ_j Γ_{y_j} CE_j, as a loss module (reduction: mean)."""

    reduction = "mean"

    def __init__(self, gamma: torch.Tensor) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.gamma[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()


def pyhessian_top(objective, theta, gamma, k: int) -> tuple[np.ndarray, float]:
    """PyHessian's ``hessian.eigenvalues`` (power iteration with deflation, its defaults
    maxIter = 100, tol = 1e-3) per member, counting its Hessian-vector products."""
    # the benchmark's own install, never a dependency; the package's name `hessian` is its class
    module = importlib.import_module("pyhessian.hessian")

    original, count = module.hessian_vector_product, [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    values, default = [], torch.get_default_dtype()
    module.hessian_vector_product = counted
    torch.set_default_dtype(torch.float64)  # its random start vectors: float64 like θ
    try:
        for m in range(theta.shape[0]):
            torch.manual_seed(m)
            net = torch_module(objective, theta[m])
            h = module.hessian(
                net, WeightedCE(gamma[m]), data=(objective.x, objective.y), cuda=False
            )
            values.append(h.eigenvalues(maxIter=100, tol=1e-3, top_n=k)[0])
    finally:
        module.hessian_vector_product = original
        torch.set_default_dtype(default)
    return np.array(values), count[0] / theta.shape[0]


def curvlinops_top(objective, theta, gamma, k: int) -> tuple[np.ndarray, float]:
    from curvlinops import HessianLinearOperator  # the benchmark's own install

    values, matvecs = [], 0
    for m in range(theta.shape[0]):
        net = torch_module(objective, theta[m])
        operator = HessianLinearOperator(
            net, WeightedCE(gamma[m]), list(net.parameters()), [(objective.x, objective.y)]
        ).to_scipy()
        count = [0]

        def apply(x, operator=operator, count=count):
            count[0] += 1
            return operator @ x

        linear = sla.LinearOperator(operator.shape, matvec=apply, dtype=np.float64)
        v0 = np.random.default_rng(m).standard_normal(operator.shape[0])
        found = sla.eigsh(linear, k=k, which="LA", tol=1e-3, v0=v0, return_eigenvectors=False)
        values.append(np.sort(found)[::-1])
        matvecs += count[0]
    return np.array(values), matvecs / theta.shape[0]


def bench_solvers(objective: dlf.Objective, thetas: list[torch.Tensor], members: int) -> str:
    t = len(thetas) - 1
    theta = thetas[t][:members]
    gamma = gammas(torch.tensor([t]))[0][:members]
    exact = torch.linalg.eigvalsh(Curvature(objective).at(t, theta, gamma).dense_hessian())
    exact = exact.flip(-1)[:, :3].numpy()
    lines = [
        f"4. Top-3 Hessian eigenvalues at step {t}, {members} members (one at a time for the "
        "others), against dense eigvalsh",
        f"   {'solver':44s} {'max rel err':>12s} {'matvecs':>8s} {'ms per member':>14s}",
    ]

    def row(name: str, solve: Callable[[], tuple[np.ndarray, float]]) -> None:
        start = CLOCK()
        try:
            values, matvecs = solve()
        except ImportError as exc:
            lines.append(f"   {name:44s} not installed ({exc.name})")
            return
        ms = (CLOCK() - start) / members * 1e3
        error = np.abs(values - exact).max() / np.abs(exact).min()
        lines.append(f"   {name:44s} {error:12.1e} {matvecs:8.1f} {ms:14.1f}")

    def ours(tol: float, warm: bool) -> tuple[np.ndarray, float]:
        helper = Curvature(objective)
        if warm:
            previous = thetas[t - 1][:members], gammas(torch.tensor([t - 1]))[0][:members]
            helper.at(t - 1, *previous).spectrum(3, tol=tol)
        result = helper.at(t, theta, gamma).spectrum(3, tol=tol)
        return result.values.numpy(), float(result.matvecs.double().mean())

    row("this Lanczos, cold, tol 1e-3 (all members)", lambda: ours(1e-3, False))
    row("this Lanczos, warm from t-1, tol 1e-3 (+t-1)", lambda: ours(1e-3, True))
    row("this Lanczos, cold, tol 1e-8", lambda: ours(1e-8, False))
    row(
        "PyHessian power iteration, 100 iter / 1e-3",
        lambda: pyhessian_top(objective, theta, gamma, 3),
    )
    row(
        "curvlinops Hessian + scipy eigsh, tol 1e-3",
        lambda: curvlinops_top(objective, theta, gamma, 3),
    )
    return "\n".join(lines)


# --- 5. NTK --------------------------------------------------------------------------------------


def bench_ntk(objective: dlf.Objective, thetas: list[torch.Tensor], repeats: int) -> str:
    t = len(thetas) - 1
    lines = [f"5. NTK top eigenvalue at step {t}, width {WIDTH}, float64 (median of {repeats})"]
    for members in (1, MEMBERS):
        theta, before = thetas[t][:members], thetas[t - 1][:members]
        warm = ntk.ntk_lanczos(objective.model, before, objective.x, 1, None)
        dense = ntk.ntk_eigenvalues(objective.model, theta, objective.x, 1, "sample").values
        solved = ntk.ntk_lanczos(objective.model, theta, objective.x, 1, warm.vectors)
        error = float(((solved.values - dense).abs() / dense).max())
        times = interleaved(
            {
                "dense": lambda theta=theta: ntk.ntk_eigenvalues(
                    objective.model, theta, objective.x, 1, "sample"
                ),
                "lanczos": lambda theta=theta, warm=warm: ntk.ntk_lanczos(
                    objective.model, theta, objective.x, 1, warm.vectors
                ),
            },
            repeats,
        )
        lines.append(
            f"   {members:2d} members: dense P×P Gram {times['dense'] * 1e3:8.1f} ms, warm Lanczos "
            f"{times['lanczos'] * 1e3:8.1f} ms ({float(solved.matvecs.double().mean()):.1f} "
            f"products, rel err {error:.1e})"
        )
    return "\n".join(lines)


# --- 7. adaptive cadence on the 2021 Fig. 4 run --------------------------------------------------


def fig4_config(steps: int, analyzers: dict, root: str) -> dlf.RunConfig:
    return dlf.RunConfig.model_validate(
        {
            "name": "bench_fig4",
            "model": {"width": WIDTH, "dtype": "float64"},
            "loss": {"name": "dce"},
            "schedule": {"amplitude": 70, "period": 5000},
            "train": {"steps": steps, "lr": 1.0, "seeds": 1, "eval_every": 10**6},
            "analyzers": analyzers,
            "output": {"root": root, "progress": "never", "checkpoint_seconds": 10**6},
        }
    )


def band_coverage(ds, low: float, high: float) -> tuple[int, int]:
    """Sampled steps whose factor (or the previous sample's) is in the band, and how many of
    them were not followed by a sample at the next step (0: every step in the band resolved)."""
    steps, factor = ds.lanczos_step.values, ds.lanczos_factor.values[0]
    inside = (factor >= low) & (factor <= high)
    inside[1:] |= inside[:-1] & (np.diff(steps) == 1)
    followed = np.append(np.diff(steps) == 1, True)
    return int(inside.sum()), int((inside & ~followed).sum())


def bench_adaptive(steps: int, repeats: int, dense_samples: int) -> str:
    sparse = {
        f"adaptive, sparse every {n}": {"k": 1, "every": n, "cadence": "adaptive"}
        for n in (25, 100)
    }
    lines = [
        f"7. Adaptive cadence, 2021 Fig. 4 run, {steps} steps (time ratio against training with "
        f"the bifurcation detector alone, median of {repeats} interleaved; target <= 2x)"
    ]
    with tempfile.TemporaryDirectory() as root:
        runs = {"alone": {"bifurcation": {}}}
        runs.update({name: {"bifurcation": {}, "lanczos": opts} for name, opts in sparse.items()})
        paths = {name: Path(root) / f"{i}.nc" for i, name in enumerate(runs)}
        fns = {
            name: functools.partial(
                dlf.execute, fig4_config(steps, runs[name], root), trace_path=paths[name]
            )
            for name in runs
        }
        t = interleaved(fns, repeats)
        lines.append(f"   training + bifurcation alone: {t['alone'] / steps * 1e3:.3f} ms per step")
        for name in sparse:
            lines += adaptive_lines(name, t[name] / t["alone"], dlf.open_trace(paths[name]))
        lines.append(dense_check(dlf.open_trace(paths[name]), root, steps, dense_samples))
    return "\n".join(lines)


def adaptive_lines(name: str, ratio: float, ds) -> list[str]:
    """What one adaptive run cost and resolved: samples, band coverage, crossings, estimators."""
    from dlf.analysis.crossing import find_crossings

    band = [float(b) for b in ds.lanczos_factor.attrs["band"]]
    in_band, missed = band_coverage(ds, *band)
    matvecs = ds.lanczos_matvecs.values[0]
    c = find_crossings(ds)

    def show(key: str, digits: int) -> list[float]:
        return np.round(c[f"crossing_{key}"].values, digits).tolist()

    return [
        f"   {name} (band {band}): {ratio:.2f}x; {ds.sizes['lanczos_step']} samples, "
        f"{matvecs.sum()} matvecs ({matvecs.mean():.2f} per sample), all converged: "
        f"{bool(ds.lanczos_converged.all())}",
        f"     sampled steps in the band {in_band}, of them not followed by the next step {missed}",
        f"     events {ds.sizes['bifurcation_event']}, crossings found "
        f"{int(np.isfinite(c.crossing_step).sum())}, resolved to the step "
        f"{int((c.crossing_bracket == 1).sum())}",
        f"     crossing step {show('step', 1)}",
        f"     delay onset - crossing {show('delay', 1)}",
        f"     ratio at onset (two walls) {show('ratio_onset', 3)}",
        f"     growth-rate λ {show('lambda_growth', 3)} (r ± se: {show('growth_rate', 4)} ± "
        f"{show('growth_rate_se', 4)})",
        f"     mean sampled λ over the same steps {show('lambda_ritz', 3)}",
    ]


def dense_check(ds, root: str, steps: int, samples: int) -> str:
    """λmax of the adaptive run against eigvalsh of the dense Hessian at sampled steps."""
    chosen = ds.lanczos_step.values[:: max(1, ds.sizes["lanczos_step"] // samples)]
    windows = [(int(t), int(t)) for t in chosen]
    exact = {"k": 1, "mode": "exact", "every": steps + 1, "windows": windows}
    path = Path(root) / "exact.nc"
    dlf.execute(fig4_config(steps, {"lanczos": exact}, root), trace_path=path)
    dense = dlf.open_trace(path).lanczos_eigenvalues.sel(lanczos_step=chosen).values[0, :, 0]
    lam = ds.lanczos_eigenvalues.sel(lanczos_step=chosen).values[0, :, 0]
    bound = ds.lanczos_error_bound.sel(lanczos_step=chosen).values[0]
    slack = 1e-10 * np.abs(dense)
    inside = (dense >= lam - slack) & (dense <= lam + bound + slack)
    error = np.abs(lam - dense) / np.abs(dense)
    return (
        f"   against dense eigvalsh at {len(chosen)} sampled steps: max rel error "
        f"{error.max():.1e}, median {np.median(error):.1e}; λmax in [λ, λ + bound] at "
        f"{int(inside.sum())}/{len(chosen)}; median bound/λ {np.median(bound / np.abs(dense)):.1e}"
    )


def main() -> None:
    global CLOCK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--overhead-only", action="store_true", help="sections 1 and 2 only")
    parser.add_argument("--one-product-only", action="store_true", help="section 6 only")
    parser.add_argument("--adaptive-only", action="store_true", help="section 7 only")
    parser.add_argument("--fig4-steps", type=int, default=70_000, help="section 7's run length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK = time.process_time
    steps, track_steps, repeats, members = (20, 26, 1, 2) if args.quick else (300, 201, 3, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    if args.adaptive_only:
        print(bench_adaptive(args.fig4_steps, 1 if args.quick else 3, 10 if args.quick else 120))
        return
    if args.one_product_only:
        objective, theta0 = objective_of(WIDTH)
        print(bench_one_product(objective, trajectory(objective, theta0, track_steps)))
        return
    for width in (WIDTH, 1000):
        print(bench_hvp(width, 5 * repeats), flush=True)
    every_step = {
        "every step, k=1, tol 1e-3 (default: tracker)": {"every": 1, "k": 1},
        "every step, k=1, tol 1e-2 (tracker)": {"every": 1, "k": 1, "tol": 1e-2},
        "every step, k=1, tol 1e-3, full warm solves": {"every": 1, "k": 1, "track": False},
        "every 25 steps, k=3 (the papers' cadence)": {"every": 25, "k": 3},
    }
    print(bench_overhead(steps, WIDTH, every_step, repeats), flush=True)
    wide = {name: every_step[name] for name in list(every_step)[::3]}
    print(bench_overhead(max(steps // 5, 20), 1000, wide, repeats), flush=True)
    if args.overhead_only:
        return
    objective, theta0 = objective_of(WIDTH)
    thetas = trajectory(objective, theta0, track_steps)
    exact: dict[int, torch.Tensor] = {}
    print("3. Mean matvecs per tracked step along one trajectory, warm vs cold start")
    print(bench_warm_cold(objective, thetas, 1, 1, exact), flush=True)
    print(bench_warm_cold(objective, thetas, 1, 1, exact, tol=1e-2), flush=True)
    print(bench_warm_cold(objective, thetas, 25, 3, exact), flush=True)
    print(bench_solvers(objective, thetas, members), flush=True)
    print(bench_ntk(objective, thetas, repeats), flush=True)
    print(bench_one_product(objective, thetas), flush=True)


if __name__ == "__main__":
    main()
