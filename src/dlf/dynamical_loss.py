"""A dynamical loss as a ``torch.nn.Module``, for anyone's own training loop.

    loss_fn = dlf.DynamicalLoss("ce", n_classes=10, amplitude=10, period=100, total_steps=5000)
    loss = loss_fn(model(x), y, step)

It is the trainer's own implementation — the same Γ (:func:`dlf.numerics.schedules.weights`, any
registered schedule) and the same loss functions (:mod:`dlf.numerics.losses`) — so a notebook
loop and a ``dlf-study run`` optimise the same F. Γ is switched off (≡ 1) from ``static_from``
on, or for the last period when ``total_steps`` is given (the papers' protocol); with neither it
oscillates forever.
"""

from __future__ import annotations

import torch

from dlf.config import ScheduleConfig
from dlf.errors import ConfigError
from dlf.hooks.manager import load_plugins
from dlf.numerics.losses import (
    LossFn,
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)
from dlf.numerics.schedules import weights

# The loss each name weights by Γ: "ce" and "mse" are the dynamical CE and DMSE1 here.
KINDS: dict[str, LossFn] = {
    "ce": weighted_cross_entropy,
    "dce": weighted_cross_entropy,
    "mse": weighted_squared_error,
    "dmse1": weighted_squared_error,
    "dmse2": scaled_target_squared_error,
}


class DynamicalLoss(torch.nn.Module):
    """F(t) = the ``loss`` weighted by Γ(t): mean over samples of logits ``(N, C)``, or one value
    per member for logits ``(M, N, C)``."""

    def __init__(
        self,
        loss: str,
        n_classes: int,
        amplitude: float = 10.0,
        period: float = 100.0,
        schedule: str = "triangle",
        static_from: float | None = None,
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        if loss not in KINDS:
            raise ConfigError("loss", f"unknown loss {loss!r}; allowed: {', '.join(KINDS)}")
        if n_classes < 2 or amplitude < 1 or period <= 0:
            raise ConfigError(
                "DynamicalLoss", "needs n_classes >= 2, amplitude >= 1 and period > 0"
            )
        self.loss = loss
        self.fn = KINDS[loss]
        # any registered schedule, plugins' included
        self.schedule = load_plugins().registries.schedules.get(schedule, "schedule")
        self.n_classes = n_classes
        self.amplitude, self.period = float(amplitude), float(period)
        if static_from is None and total_steps is not None:  # the trainer's rule, to the step
            static_from = ScheduleConfig().first_static_step(self.period, total_steps)
        self.static_from = static_from

    def gamma(self, step: int) -> torch.Tensor:
        """Γ(step) ``(n_classes,)``, float64; it sums to ``n_classes``."""
        never = float("inf") if self.static_from is None else float(self.static_from)

        def one(value: float) -> torch.Tensor:
            return torch.tensor([value], dtype=torch.float64)

        steps = torch.tensor([step])
        args = (one(self.amplitude), one(self.period), self.n_classes, one(never))
        return weights(self.schedule, steps, *args)[0, 0]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        gamma = self.gamma(step).to(logits.dtype).to(logits.device)
        if logits.dim() == 2:
            return self.fn(logits.unsqueeze(0), targets, gamma.unsqueeze(0))[0]
        return self.fn(logits, targets, gamma.expand(logits.shape[0], -1))

    def extra_repr(self) -> str:
        return (
            f"{self.loss!r}, n_classes={self.n_classes}, amplitude={self.amplitude:g}, "
            f"period={self.period:g}, static_from={self.static_from}"
        )
