"""The reference gradient path: forward through the objective, ``torch.autograd`` backward."""

from __future__ import annotations

import torch

from dlf.engine.gradients.base import accuracy
from dlf.numerics.objective import Objective


class AutogradGradient:
    """The reference: forward through ``objective``, one ``torch.autograd.grad`` per step."""

    name = "autograd"

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, theta, gamma, active, x, y):
        obj = self.objective
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = obj.model.forward(theta, x)
            loss = obj.loss(logits, y, gamma)
            (grad,) = torch.autograd.grad(torch.where(active, loss, 0.0).sum(), theta)
        loss = loss.detach()
        self._last = (logits.detach(), y, loss)
        return loss, grad

    def metrics(self):
        assert self._last is not None, "metrics() before the first gradient"
        logits, y, loss = self._last
        if not self.objective.loss.dynamical:
            return loss, accuracy(logits, y)
        return self.static_and_accuracy(logits, y)

    def evaluate(self, theta, x, y):
        with torch.no_grad():
            return self.static_and_accuracy(self.objective.logits(theta, x), y)

    def static_and_accuracy(self, logits: torch.Tensor, y: torch.Tensor):
        obj = self.objective
        ones = torch.ones(logits.shape[0], obj.n_classes, dtype=logits.dtype, device=logits.device)
        with torch.no_grad():
            return obj.static(logits, y, ones), accuracy(logits, y)
