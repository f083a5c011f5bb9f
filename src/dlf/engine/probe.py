"""How fast this machine trains a config now: the gradient pass timed for a moment, so that a
study can say what it will cost before it starts (busy cores included, as they are)."""

from __future__ import annotations

import time

import torch

from dlf.config import Member, RunConfig
from dlf.engine.gradients import gradient_for
from dlf.engine.run import prepare


def step_rate(config: RunConfig, n_members: int, seconds: float = 0.5) -> float:
    """Member-steps per second of ``config``'s training step for ``n_members`` members (its
    first amplitude, period and η), timed over about ``seconds`` after one warm-up step.
    Evaluations and records, a few per cent of a step, are left out."""
    lr, amplitude = config.train.lr[0], config.schedule.amplitude[0]
    period = config.schedule.period[0]
    members = [Member(seed=s, amplitude=amplitude, period=period, lr=lr) for s in range(n_members)]
    _, members, run = prepare(config, members=members)
    gradient = gradient_for(run.objective)
    theta = run.model.init([m.seed for m in members], config.model.init, run.dtype, run.device)
    gamma = torch.ones(n_members, run.objective.n_classes, dtype=run.dtype, device=run.device)
    active = torch.ones(n_members, dtype=torch.bool, device=run.device)
    x, y = run.objective.x, run.objective.y
    if config.train.optimizer == "sgd" and config.train.batch_size:  # a minibatch per step
        rows = torch.arange(min(config.train.batch_size, len(y)), device=run.device)
        x, y = x[rows.expand(n_members, -1)], y[rows.expand(n_members, -1)]
    gradient(theta, gamma, active, x, y)  # warm-up: kernel build, first allocation
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        gradient(theta, gamma, active, x, y)
        steps += 1
    return n_members * steps / elapsed
