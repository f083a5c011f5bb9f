"""The C kernel path (``dlf/kernels/mlp_step.c``): one hidden ReLU layer on a CPU, full batch."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlf import kernels
from dlf.engine.gradients.base import KINDS
from dlf.engine.gradients.fused import FusedGradient
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

KIND_CODES = {"ce": 0, "se": 1, "st": 2}  # the kernel's enum


def kernel_function(dtype: torch.dtype) -> Callable[..., int] | None:
    """The kernel's entry point for ``dtype``, compiled on first use (None where it cannot be)."""
    return kernels.entry("mlp_step", dtype, ints=7, pointers=7)


class KernelGradient:
    """The compiled kernel for one hidden ReLU layer on a CPU, full batch.

    Per-member inputs (minibatches) go to :class:`FusedGradient` instead.
    """

    def __init__(self, objective: Objective, function: Callable[..., int]) -> None:
        self.objective = objective
        self.function = function
        self.kinds = (KIND_CODES[KINDS[objective.loss.fn]], KIND_CODES[KINDS[objective.static.fn]])
        self.minibatches = FusedGradient(objective)
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: torch.Tensor | None = None  # (R, 3): F, static loss, accuracy

    name = "kernel"

    @staticmethod
    def supports(objective: Objective) -> bool:
        model = objective.model
        return (
            FusedGradient.supports(objective)
            and isinstance(model, MLP)
            and len(model.hidden) == 1
            and model.activation == "relu"
            and model.n_in <= kernels.MAX_INPUTS
            and objective.x.device.type == "cpu"
            and objective.x.dtype in kernels.TYPES
        )

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """``[x, 1]`` ``(P, in + 1)``, contiguous; cached for the training inputs."""
        if self._inputs is not None and self._inputs[0] is x:
            return self._inputs[1]
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1).contiguous()
        if x is self.objective.x:
            self._inputs = (x, xa)
        return xa

    def run(self, theta, gamma, active, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """Call the kernel; returns ``(R, 3)`` (F, static loss, accuracy) and ∂F/∂θ."""
        theta, gamma, y = theta.contiguous(), gamma.contiguous(), y.contiguous()
        active = active.contiguous().view(torch.uint8)
        xa = self.augmented(x)
        rows, (samples, inputs), width = theta.shape[0], xa.shape, self.objective.model.width
        out, grad = torch.empty(rows, 3, dtype=theta.dtype), torch.empty_like(theta)
        tensors = (xa, y, theta, gamma, active, grad, out)
        status = self.function(
            rows,
            samples,
            inputs,
            gamma.shape[1],
            width,
            *self.kinds,
            *(t.data_ptr() for t in tensors),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("the C kernel could not allocate its scratch memory")
        return out, grad

    def __call__(self, theta, gamma, active, x, y):
        if x.dim() == 3:
            self._last = None
            return self.minibatches(theta, gamma, active, x, y)
        self._last, grad = self.run(theta, gamma, active, x, y)
        return self._last[:, 0], grad

    def metrics(self):
        if self._last is None:
            return self.minibatches.metrics()
        return self._last[:, 1], self._last[:, 2]

    def evaluate(self, theta, x, y):
        rows, classes = theta.shape[0], self.objective.n_classes
        ones = torch.ones(rows, classes, dtype=theta.dtype)
        idle = torch.zeros(rows, dtype=torch.bool)  # inactive rows: no backward pass
        out, _ = self.run(theta, ones, idle, x, y)
        return out[:, 1], out[:, 2]
