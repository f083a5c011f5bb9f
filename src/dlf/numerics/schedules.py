"""Γ_i(t) schedules: per-class loss weights that tilt the landscape towards one class at a time.

A schedule maps steps ``(S,)`` and per-member amplitude/period ``(M,)`` to weights
``(S, M, C)``. Evaluating many steps at once lets the trainer precompute Γ in chunks instead of
paying for small tensor operations every step. Switching the oscillations off (Γ ≡ 1) from a
given step is the trainer's job, common to every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _emphasis(
    steps: torch.Tensor, period: torch.Tensor, n_classes: int, raw: torch.Tensor
) -> torch.Tensor:
    """Put ``raw`` weight on the class in turn, floor(t/T) mod C, and 1 on the others; normalise."""
    current = torch.div(steps[:, None], period[None, :], rounding_mode="floor").remainder(n_classes)
    classes = torch.arange(n_classes, device=steps.device)
    hat = torch.where(
        current[..., None] == classes, raw[..., None], torch.ones_like(raw)[..., None]
    )
    return n_classes * hat / hat.sum(dim=-1, keepdim=True)


def triangle(
    steps: torch.Tensor, amplitude: torch.Tensor, period: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """2021 eqs. 2–5: the emphasised class's raw weight rises 1 → A at T/2 and falls back to 1.

    t_T = t mod T; f = 1 + m·t_T for t_T ≤ T/2, else 2A − m·t_T − 1, with m = 2(A − 1)/T.
    At t_T = 0 the weight is 1, so every period starts (and A = 1 stays) at the static loss.
    """
    t = steps.to(amplitude.dtype)[:, None]
    t_mod = torch.remainder(t, period[None, :])
    slope = 2 * (amplitude - 1) / period
    rising = 1 + slope * t_mod
    falling = 2 * amplitude - slope * t_mod - 1
    raw = torch.where(t_mod <= period / 2, rising, falling)
    return _emphasis(steps, period, n_classes, raw)


def sine(
    steps: torch.Tensor, amplitude: torch.Tensor, period: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """A smooth variant: raw weight 1 + (A − 1)·sin²(π t_T / T), peaking at A at T/2."""
    t = steps.to(amplitude.dtype)[:, None]
    phase = torch.remainder(t, period[None, :]) / period
    raw = 1 + (amplitude - 1) * torch.sin(math.pi * phase) ** 2
    return _emphasis(steps, period, n_classes, raw)


def weights(
    schedule: Schedule,
    steps: torch.Tensor,
    amplitude: torch.Tensor,
    period: torch.Tensor,
    n_classes: int,
    static_from: torch.Tensor,
) -> torch.Tensor:
    """Γ ``(S, M, C)`` as training uses it: the schedule, and 1 from each member's
    ``static_from`` on. The trainer and :class:`dlf.DynamicalLoss` both compute Γ here."""
    gamma = schedule(steps, amplitude, period, n_classes)
    static = steps[:, None] >= static_from[None, :]
    return torch.where(static[..., None], torch.ones_like(gamma), gamma)
