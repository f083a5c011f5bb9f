"""Model ensembles: the toolkit's CNN ensembles (vmap and per-member) against a naive loop.

Run ``python benchmarks/bench_models.py`` (about a minute on a 2-core CPU at the defaults;
``--setups 4x8,16x32`` picks the networks, Myrtle5's channels c by image size; ``--members``,
``--steps``, ``--samples`` the rest; ``--threads N`` torch's thread count; ``--clock cpu`` CPU
seconds on a shared machine). Both variants run in this one process, interleaved round by round,
the best round of each kept (so the first, cold round does not count where there are two or more).

Set-up: the built-in Myrtle5-style CNN on synthetic 3-channel images (3 classes, each class its
own mean colour), float32, DCE with A = 5 and T = 10 (Γ oscillating throughout), full-batch
gradient descent with heavy-ball momentum β = 0.9, η = 0.05.

- **vmap**, **per-member**: ``dlf.execute`` trains all members as one ``ModuleModel``:
  parameters stacked in a flat θ, forward pass ``torch.func.functional_call`` under
  ``torch.func.vmap`` (``model.ensemble: vmap``) or called once per member (``loop``, what
  ``auto`` picks for a CNN on a CPU), autograd gradient path, the trainer's own momentum update;
  trace recorded every step (the defaults). "step alone" times vmap's F and ∂F/∂θ without the
  trainer around it.
- **loop**: one ``nn.Module`` per member built from the member's seed (so it starts where the
  member starts), ``torch.optim.SGD(momentum=0.9)``, ``dlf.DynamicalLoss`` (the trainer's Γ and
  loss), the members trained one after another; nothing recorded.

Both must give the same loss at every step (checked, float32 rounding tolerance) before a rate is
reported: the loop does the ensemble's mathematics, so the ratio compares implementations only.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import bench_training as training
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

import dlf
from dlf.config import members_of
from dlf.engine.gradients import AutogradGradient
from dlf.engine.run import build_context
from dlf.hooks.manager import Plugins, plugins_with
from dlf.hooks.registries import DatasetEntry
from dlf.numerics.data import Dataset
from dlf.numerics.networks import myrtle5

CLASSES, AMPLITUDE, PERIOD, LR, MOMENTUM = 3, 5.0, 10.0, 0.05, 0.9
DATASET = "bench_images"
RESULTS = Path(__file__).parent / "results" / "models.txt"


class Setup(NamedTuple):
    """One measured network: Myrtle5's ``channels`` c on images ``size`` pixels square."""

    channels: int
    size: int


class ImagesOptions(BaseModel):
    """Options of the benchmark's synthetic image set."""

    model_config = ConfigDict(extra="forbid")
    samples: int = 64
    size: int = 32
    seed: int = 0


def images(options: ImagesOptions) -> Dataset:
    """``samples`` images ``(3, size, size)``, labels cycling 0..2: each class a mean colour in
    [0.2, 0.8] plus N(0, 0.1²) pixel noise (learnable, so the losses move); 8 validation images
    drawn the same way."""
    rng = np.random.default_rng(options.seed)
    colour = rng.uniform(0.2, 0.8, size=(CLASSES, 3, 1))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % CLASSES
        pixels = colour[labels] + rng.normal(0, 0.1, size=(n, 3, options.size**2))
        return pixels.reshape(n, -1).astype(np.float32), labels

    (x_train, y_train), (x_val, y_val) = draw(options.samples), draw(8)
    shape = (3, options.size, options.size)
    return Dataset(DATASET, x_train, y_train, x_val, y_val, CLASSES, shape)


def config(args: argparse.Namespace, setup: Setup, root: str, way: str = "vmap") -> dlf.RunConfig:
    """The benchmark run: ``args.members`` seeds of Myrtle5 (``setup``) on synthetic images,
    its members run the ``way`` of ``model.ensemble``."""
    return dlf.RunConfig.model_validate(
        {
            "name": "bench_models",
            "data": {"name": DATASET, "samples": args.samples, "size": setup.size},
            "model": {
                "name": "myrtle5",
                "options": {"channels": setup.channels},
                "dtype": "float32",
                "ensemble": way,
            },
            "loss": {"name": "dce"},
            "schedule": {"amplitude": AMPLITUDE, "period": PERIOD, "static_last_period": False},
            "train": {
                "steps": args.steps,
                "lr": LR,
                "momentum": MOMENTUM,
                "seeds": args.members,
                "eval_every": args.steps,
            },
            "output": {"root": root, "progress": "never", "checkpoint_seconds": 10**6},
        }
    )


def with_images(*objects: object) -> Plugins:
    """The installed plugins and ``objects``, with the benchmark's synthetic images registered
    as a data set: a plugin manager of its own (the process's shared one is left as it is)."""
    plugins = plugins_with(objects)
    plugins.registries.datasets.add(DATASET, DatasetEntry(images, ImagesOptions))
    return plugins


def ensemble(cfg: dlf.RunConfig, root: str) -> tuple[float, np.ndarray]:
    """Seconds of ``dlf.execute``'s training loop and its losses ``(member, step)``."""
    watch = training.Stopwatch()
    plugins = with_images(watch)
    result = dlf.execute(cfg, trace_path=Path(root) / "trace.nc", plugins=plugins)
    return watch.seconds, result.open()["loss"].values


def loop(cfg: dlf.RunConfig) -> tuple[float, np.ndarray]:
    """Seconds of training each member alone as an ``nn.Module`` with ``torch.optim.SGD``, and
    the losses ``(member, step)``."""
    data = images(ImagesOptions.model_validate(cfg.data.options))
    x = torch.as_tensor(data.x_train).view(-1, *data.input_shape)
    y = torch.as_tensor(data.y_train)
    channels = cfg.model.options["channels"]
    losses, seconds = [], 0.0
    for member in members_of(cfg):
        torch.manual_seed(member.seed)  # the member's own initialisation, as ModuleModel's
        net = myrtle5(data.input_shape, CLASSES, channels=channels)
        loss_fn = dlf.DynamicalLoss("dce", CLASSES, member.amplitude, member.period)
        optimiser = torch.optim.SGD(net.parameters(), lr=member.lr, momentum=MOMENTUM)
        history = torch.empty(cfg.train.steps)
        start = training.clock()
        for step in range(cfg.train.steps):
            optimiser.zero_grad()
            loss = loss_fn(net(x), y, step)
            loss.backward()
            optimiser.step()
            history[step] = loss.detach()
        seconds += training.clock() - start
        losses.append(history.numpy())
    return seconds, np.stack(losses)


def step_alone(cfg: dlf.RunConfig) -> float:
    """Seconds of the ensemble's F and ∂F/∂θ alone (the autograd path through vmap), as many
    times as the run has steps: the trainer's own cost is the rest of the ensemble's time."""
    run = build_context(cfg, with_images(), members_of(cfg))
    obj = run.objective
    theta = run.model.init([m.seed for m in run.members], dtype=run.dtype)
    gamma = torch.ones(run.n_members, CLASSES, dtype=run.dtype)
    active = torch.ones(run.n_members, dtype=torch.bool)
    gradient = AutogradGradient(obj)
    start = training.clock()
    for _ in range(cfg.train.steps):
        gradient(theta, gamma, active, obj.x, obj.y)
    return training.clock() - start


def compare(
    cfg: dlf.RunConfig, per_member: dlf.RunConfig, rounds: int, root: str
) -> dict[str, float]:
    """Best seconds of each variant over ``rounds`` interleaved rounds, after checking that all
    give the same loss at every step of every member (else they would time different work)."""
    losses: dict[str, np.ndarray] = {}

    def measured(name: str, train: Callable[[], tuple[float, np.ndarray]]) -> Callable[[], float]:
        def once() -> float:
            seconds, losses[name] = train()
            return seconds

        return once

    best = training.best_of(
        rounds,
        {
            "loop": measured("loop", lambda: loop(cfg)),
            "ensemble": measured("ensemble", lambda: ensemble(cfg, root)),
            "per-member": measured("per-member", lambda: ensemble(per_member, root)),
            "step": lambda: step_alone(cfg),
        },
    )
    for name in ("ensemble", "per-member"):
        np.testing.assert_allclose(losses[name], losses["loop"], rtol=1e-4, atol=1e-6)
    best["gap"] = max(float(np.abs(losses[n] - losses["loop"]).max()) for n in losses)
    return best


def setups(text: str) -> list[Setup]:
    """``4x8,16x32``: Myrtle5's channels c by image size, one set-up each."""
    pairs = [item.split("x") for item in text.split(",")]
    return [Setup(int(channels), int(size)) for channels, size in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setups", type=setups, default=setups("4x8,8x16,16x32"), help="c x image size, ..."
    )
    parser.add_argument("--members", type=int, default=8, help="ensemble members (seeds)")
    parser.add_argument("--steps", type=int, default=10, help="training steps")
    parser.add_argument("--samples", type=int, default=64, help="training images (full batch)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    training.common_options(parser, RESULTS)
    args = parser.parse_args()
    training.CLOCK = args.clock
    if args.threads:
        torch.set_num_threads(args.threads)
    out = training.Results(args.out)
    out(
        f"bench_models: cpu {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock, python {sys.version.split()[0]}"
    )
    out(
        f"Myrtle5, float32, {args.samples} images full batch, {args.members} members x "
        f"{args.steps} steps, best of {args.rounds}; member-steps/s"
    )
    header = ("c", 3), ("image", 6), ("params", 7), ("loop", 8), ("vmap", 8), ("ratio", 6)
    header += ("per-member", 10), ("ratio", 6), ("step alone", 10)
    out(" ".join(f"{name:>{width}}" for name, width in header) + f" {'max gap':>8}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for setup in args.setups:
            runs = config(args, setup, root), config(args, setup, root, "loop")
            best = compare(*runs, args.rounds, root)
            names = ("loop", "ensemble", "per-member", "step")
            rate = {k: args.members * args.steps / best[k] for k in names}
            net = myrtle5((3, setup.size, setup.size), CLASSES, channels=setup.channels)
            n_params = sum(p.numel() for p in net.parameters())
            out(
                f"{setup.channels:>3} {setup.size:>3}^2 {n_params:>7} {rate['loop']:>8.1f} "
                f"{rate['ensemble']:>8.1f} {rate['ensemble'] / rate['loop']:>5.2f}x "
                f"{rate['per-member']:>10.1f} {rate['per-member'] / rate['loop']:>5.2f}x "
                f"{rate['step']:>10.1f} {best['gap']:>8.1e}"
            )
    out("(step alone: the ensemble's F and gradient without the trainer; max gap: the largest")
    out(" |ensemble - loop| loss difference over both ensembles, all members and steps)")
    out(f"total {time.perf_counter() - start:.0f} s wall")
    out.save()


if __name__ == "__main__":
    main()
