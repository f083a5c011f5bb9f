"""The training step's F and ∂F/∂θ for every member, without autograd where that is faster.

The trainer needs, at every step, the loss F_m(θ_m; Γ_m) and its gradient for all members, and at
recorded steps the static loss and the training accuracy at the same point. :func:`gradient_for`
returns an object that computes them:

- :class:`FusedGradient`, for the toolkit's MLP and built-in losses: the forward and backward
  passes written out by hand as batched matrix products (members are the batch), so no autograd
  graph is built, the ReLU mask is the stored activation itself, the bias of the first layer rides
  in the input matrix (``[x, 1]`` times the ``[W; b]`` block that θ already stores contiguously),
  and the hidden-layer buffers are allocated once and reused in place.
- :class:`AutogradGradient` for everything else (plugin losses or models): ``torch.autograd``.

Both give the same numbers to rounding (``tests/test_fastpath.py``), so a member trained in an
ensemble follows exactly the trajectory it follows alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from dlf.losses import (
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)
from dlf.models import MLP
from dlf.objective import Objective

# The built-in loss functions the fused pass knows how to differentiate, by kind.
KINDS: dict[Callable[..., torch.Tensor], str] = {
    weighted_cross_entropy: "ce",  # (1/P) Σ_j Γ_{y_j} CE_j
    weighted_squared_error: "se",  # (1/P) Σ_j Γ_{y_j} Σ_i (f_i − δ_{i,y_j})²
    scaled_target_squared_error: "st",  # (1/P) Σ_j Σ_i (f_i − Γ_i δ_{i,y_j})²
}


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Fraction of samples whose arg-max logit (along ``dim``) is the label, per member."""
    return (logits.argmax(dim=dim) == labels).to(logits.dtype).mean(dim=-1)


class Gradient(Protocol):
    """F and ∂F/∂θ per member, and the step's metrics at the same point."""

    def __call__(
        self,
        theta: torch.Tensor,
        gamma: torch.Tensor,
        active: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F (R,), ∂F/∂θ (R, n))`` at ``theta (R, n)``; rows not ``active`` get no gradient."""
        ...

    def metrics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Static loss (Γ ≡ 1) and training accuracy ``(R,)`` at the last call's point."""
        ...


def gradient_for(objective: Objective) -> Gradient:
    """The fused pass where it applies to ``objective``'s model and losses, else autograd."""
    if FusedGradient.supports(objective):
        return FusedGradient(objective)
    return AutogradGradient(objective)


class AutogradGradient:
    """The reference: forward through ``objective``, one ``torch.autograd.grad`` per step."""

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
        obj = self.objective
        with torch.no_grad():
            if obj.loss.dynamical:
                ones = torch.ones(logits.shape[0], obj.n_classes, dtype=logits.dtype)
                static = obj.static(logits, y, ones.to(logits.device))
            else:
                static = loss
            return static, accuracy(logits, y)


class FusedGradient:
    """Hand-written forward and backward of :class:`~dlf.models.MLP` for the built-in losses.

    Activations are kept as ``(R, P, width)`` (rows of θ are the batch of every product); the
    logits and their gradient as ``(R, class, P)``, the orientation in which the products with the
    few-class output layer run fastest.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.model: MLP = objective.model
        self.kind = KINDS[objective.loss.fn]
        self.static_kind = KINDS[objective.static.fn]
        self.derivative = {"relu": relu_backward_, "tanh": tanh_backward_}[self.model.activation]
        self.activate = {"relu": torch.relu_, "tanh": torch.tanh_}[self.model.activation]
        # θ stores each layer as W (fan_in × fan_out) followed by b (fan_out): one
        # (fan_in + 1) × fan_out block, the weights of the augmented input [h, 1].
        self.offsets: list[int] = []
        offset = 0
        for fan_in, fan_out in self.model.layer_sizes:
            self.offsets.append(offset)
            offset += (fan_in + 1) * fan_out
        self._buffers: dict[tuple[object, ...], list[torch.Tensor]] = {}
        self._inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._labels: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: dict[str, torch.Tensor] = {}

    @staticmethod
    def supports(objective: Objective) -> bool:
        model = objective.model
        return (
            isinstance(model, MLP)
            and len(model.hidden) > 0
            and model.activation in ("relu", "tanh")
            and objective.loss.fn in KINDS
            and objective.static.fn in KINDS
        )

    # --- pieces

    def blocks(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """Views ``(R, fan_in + 1, fan_out)`` of each layer's ``[W; b]`` in ``theta (R, n)``."""
        rows = theta.shape[0]
        return [
            theta[:, o : o + (fan_in + 1) * fan_out].view(rows, fan_in + 1, fan_out)
            for o, (fan_in, fan_out) in zip(self.offsets, self.model.layer_sizes, strict=True)
        ]

    def augmented(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x, 1]`` as ``(·, P, in + 1)`` and its transpose; cached for the shared inputs."""
        if self._inputs is not None and self._inputs[0] is x:
            return self._inputs[1], self._inputs[2]
        ones = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
        xa = torch.cat([x, ones], dim=-1)
        xa = xa.unsqueeze(0) if xa.dim() == 2 else xa
        xa_t = xa.transpose(1, 2).contiguous()
        if x is self.objective.x:
            self._inputs = (x, xa, xa_t)
        return xa, xa_t

    def buffers(self, rows: int, samples: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Per hidden layer: activation and its gradient ``(R, P, width)``, reused across steps."""
        key = (rows, samples, like.dtype, like.device)
        if key not in self._buffers:
            self._buffers = {
                key: [
                    torch.empty(rows, samples, width, dtype=like.dtype, device=like.device)
                    for width in self.model.hidden
                    for _ in range(2)
                ]
            }
        return self._buffers[key]

    def one_hot_t(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """One-hot labels ``(C, P)`` (shared) or ``(R, C, P)``; cached for the training labels."""
        if self._labels is not None and self._labels[0] is y:
            return self._labels[1]
        classes = torch.arange(like.shape[1], device=like.device)
        if y.dim() == 1:
            onehot_t = (classes[:, None] == y[None, :]).to(like.dtype)
        else:
            onehot_t = (classes[None, :, None] == y[:, None, :]).to(like.dtype)
        if y is self.objective.y:
            self._labels = (y, onehot_t)
        return onehot_t

    # --- the pass

    def __call__(self, theta, gamma, active, x, y):
        rows, samples = theta.shape[0], x.shape[-2]
        xa, xa_t = self.augmented(x)
        weights = self.blocks(theta)
        grad = torch.empty_like(theta)
        grads = self.blocks(grad)
        buffers = self.buffers(rows, samples, theta)
        hidden = buffers[0::2]
        # forward: h_1 = act([x, 1] · [W_1; b_1]), h_l = act(h_{l-1} W_l + b_l)
        torch.bmm(xa.expand(rows, -1, -1), weights[0], out=hidden[0])
        self.activate(hidden[0])
        for layer in range(1, len(hidden)):
            w, b = weights[layer][:, :-1], weights[layer][:, -1:]
            torch.baddbmm(b, hidden[layer - 1], w, out=hidden[layer])
            self.activate(hidden[layer])
        h = hidden[-1]
        w_out_t = weights[-1][:, :-1].transpose(1, 2).contiguous()  # (R, C, width)
        logits_t = torch.baddbmm(weights[-1][:, -1].unsqueeze(-1), w_out_t, h.transpose(1, 2))
        loss, d_logits_t = self.loss_and_gradient(logits_t, gamma, active, y)
        # backward: output layer, then each hidden layer down to the augmented input
        grads[-1][:, :-1].copy_(torch.bmm(d_logits_t, h).transpose(1, 2))
        torch.sum(d_logits_t, dim=2, out=grads[-1][:, -1])
        d_h = torch.bmm(d_logits_t.transpose(1, 2), w_out_t, out=buffers[-1])
        for layer in range(len(hidden) - 1, 0, -1):
            d_z = self.derivative(d_h, hidden[layer])
            w = weights[layer][:, :-1]
            torch.bmm(hidden[layer - 1].transpose(1, 2), d_z, out=grads[layer][:, :-1])
            torch.sum(d_z, dim=1, out=grads[layer][:, -1])
            d_h = torch.bmm(d_z, w.transpose(1, 2), out=buffers[2 * layer - 1])
        d_z = self.derivative(d_h, hidden[0])
        torch.bmm(xa_t.expand(rows, -1, -1), d_z, out=grads[0])
        return loss, grad

    def loss_and_gradient(
        self, logits_t: torch.Tensor, gamma: torch.Tensor, active: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F ``(R,)`` and ∂(Σ_active F)/∂logits ``(R, C, P)`` from the logits ``(R, C, P)``."""
        samples = logits_t.shape[-1]
        onehot_t = self.one_hot_t(y, logits_t)
        if self.kind == "st":
            residual = logits_t - onehot_t * gamma.unsqueeze(-1)
            loss = residual.square().sum(dim=1).mean(dim=1)
            scale = active.to(logits_t.dtype) * (2.0 / samples)
            d_logits_t = residual * scale[:, None, None]
            self._last = {"logits_t": logits_t, "y": y, "onehot_t": onehot_t}
            return loss, d_logits_t
        weight = gamma.index_select(1, y) if y.dim() == 1 else gamma.gather(1, y)  # Γ_{y_j}
        scale = torch.where(active[:, None], weight, 0.0) * (1.0 / samples)
        if self.kind == "ce":
            shifted = logits_t - logits_t.amax(dim=1, keepdim=True)
            exp = shifted.exp()
            total = exp.sum(dim=1, keepdim=True)
            per_sample = (onehot_t * (total.log() - shifted)).sum(dim=1)  # CE_j
            d_logits_t = (exp / total - onehot_t) * scale.unsqueeze(1)
        else:
            residual = logits_t - onehot_t
            per_sample = residual.square().sum(dim=1)  # Σ_i (f_i − δ_{i,y_j})²
            d_logits_t = residual * (2 * scale).unsqueeze(1)
        loss = (weight * per_sample).mean(dim=1)
        self._last = {"logits_t": logits_t, "y": y, "onehot_t": onehot_t, "per": per_sample}
        return loss, d_logits_t

    def metrics(self):
        last = self._last
        assert last, "metrics() before the first gradient"
        logits_t, y, onehot_t = last["logits_t"], last["y"], last["onehot_t"]
        if self.static_kind == self.kind:
            per_sample = last["per"]
        elif self.static_kind == "ce":
            shifted = logits_t - logits_t.amax(dim=1, keepdim=True)
            per_sample = (onehot_t * (shifted.exp().sum(dim=1, keepdim=True).log() - shifted)).sum(
                1
            )
        else:
            per_sample = (logits_t - onehot_t).square().sum(dim=1)
        return per_sample.mean(dim=1), accuracy(logits_t, y, dim=1)


def relu_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad · 1[out > 0]`` in place (the ReLU mask is the stored activation)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def tanh_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad · (1 − out²)`` in place."""
    return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)
