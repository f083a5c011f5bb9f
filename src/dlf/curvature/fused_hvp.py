"""Hessian-vector products of the built-in MLP and losses by the R-operator, without autograd.

For every member m, ``H_m v_m`` is the directional derivative of the gradient along ``v_m``
(Pearlmutter's R-operator): a forward pass, a tangent forward pass (R z_l, R h_l), the gradient's
backward pass and its tangent (R δ_l), all as batched matrix products over members. The point's
forward pass and output gradient are computed once (:class:`FusedHVP` is bound to θ and Γ), so
each product costs one tangent forward and one double backward.

Per sample j with weight s_j and P samples, the loss derivatives with respect to logits f are
- CE:    g = s_j (p − e_y) / P,          H u = s_j (p ⊙ u − p (p·u)) / P  (p = softmax f)
- MSE / DMSE1: g = 2 s_j (f − e_y) / P,  H u = 2 s_j u / P
- DMSE2: g = 2 (f − Γ ⊙ e_y) / P,        H u = 2 u / P
(s_j = Γ_{y_j} for CE and DMSE1, see :mod:`dlf.numerics.losses`). ReLU's second derivative is 0
and its first is 1 where z > 0, as in autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlf.numerics.losses import (
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

_FUSED_LOSSES = (weighted_cross_entropy, weighted_squared_error, scaled_target_squared_error)


def supports(objective: Objective) -> bool:
    """Whether the model is the built-in MLP and both losses are built-in (else use autograd)."""
    return (
        type(objective.model) is MLP
        and objective.model.activation in ("relu", "tanh")
        and objective.loss.fn in _FUSED_LOSSES
        and objective.static.fn in _FUSED_LOSSES
        and objective.x.dim() == 2
    )


def _derivatives(activation: str, h: torch.Tensor, z: torch.Tensor):
    """First and second derivative of the activation at z, given h = act(z)."""
    if activation == "tanh":
        first = 1 - h * h
        return first, -2 * h * first
    return (z > 0).to(z.dtype), None


class FusedHVP:
    """``H v`` at fixed (θ, Γ) for the loss ``fn`` ∈ the built-in losses; call it with ``v``."""

    def __init__(
        self, objective: Objective, theta: torch.Tensor, gamma: torch.Tensor, static: bool
    ) -> None:
        model = objective.model
        assert isinstance(model, MLP)  # supports() admits only the MLP
        loss = objective.static if static else objective.loss
        if static:
            gamma = torch.ones_like(gamma)
        self.model, self.fn = model, loss.fn
        self.x = objective.x.to(theta.dtype)
        self.layers = model.unflatten(theta)
        labels = objective.y.expand(theta.shape[0], objective.y.shape[-1])
        samples = labels.shape[-1]
        self.onehot = F.one_hot(labels, model.n_out).to(theta.dtype)  # (M, P, C)
        self.inputs, self.slopes, self.curvatures = [], [], []
        h = self.x
        for i, (w, b) in enumerate(self.layers):
            self.inputs.append(h)
            z = torch.matmul(h, w) + b.unsqueeze(-2)
            if i < len(self.layers) - 1:
                h = torch.relu(z) if model.activation == "relu" else torch.tanh(z)
                slope, curvature = _derivatives(model.activation, h, z)
                self.slopes.append(slope)
                self.curvatures.append(curvature)
        weight = torch.gather(gamma, -1, labels).unsqueeze(-1) / samples  # s_j / P
        if self.fn is weighted_cross_entropy:
            self.p = torch.softmax(z, dim=-1)
            self.weight = weight
            g_out = weight * (self.p - self.onehot)
        elif self.fn is weighted_squared_error:
            self.weight = 2 * weight
            g_out = self.weight * (z - self.onehot)
        else:
            self.weight = torch.full_like(weight, 2.0 / samples)
            g_out = self.weight * (z - self.onehot * gamma.unsqueeze(-2))
        self.deltas = self._backward_deltas(g_out)

    def _backward_deltas(self, g_out: torch.Tensor) -> list[torch.Tensor]:
        """δ_l = ∂F/∂z_l for every layer, output layer last."""
        deltas = [g_out]
        for i in range(len(self.layers) - 1, 0, -1):
            w = self.layers[i][0]
            deltas.insert(0, self.slopes[i - 1] * torch.matmul(deltas[0], w.transpose(-1, -2)))
        return deltas

    def _loss_hessian(self, r_out: torch.Tensor) -> torch.Tensor:
        """R(∂F/∂f) = (∂²F/∂f²) R f per sample."""
        if self.fn is weighted_cross_entropy:
            pu = self.p * r_out
            return self.weight * (pu - self.p * pu.sum(dim=-1, keepdim=True))
        return self.weight * r_out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``(H_m v_m)_m`` for ``v (M, n)``."""
        tangents = self.model.unflatten(v)
        last = len(self.layers) - 1
        r_inputs: list[torch.Tensor | None] = [None]
        r_pre: list[torch.Tensor] = []
        for i, (w, _) in enumerate(self.layers):
            dw, db = tangents[i]
            rz = torch.matmul(self.inputs[i], dw) + db.unsqueeze(-2)
            r_input = r_inputs[i]
            if r_input is not None:
                rz = rz + torch.matmul(r_input, w)
            r_pre.append(rz)
            if i < last:
                r_inputs.append(self.slopes[i] * rz)
        r_delta = self._loss_hessian(r_pre[-1])
        parts: list[torch.Tensor] = []
        for i in range(last, -1, -1):
            w, delta = self.layers[i][0], self.deltas[i]
            r_w = torch.matmul(self.inputs[i].transpose(-1, -2), r_delta)
            r_in = r_inputs[i]
            if r_in is not None:
                r_w = r_w + torch.matmul(r_in.transpose(-1, -2), delta)
            parts[:0] = [r_w.flatten(-2), r_delta.sum(dim=-2)]
            if i == 0:
                break
            r_back = torch.matmul(r_delta, w.transpose(-1, -2))
            r_back = r_back + torch.matmul(delta, tangents[i][0].transpose(-1, -2))
            r_delta = self.slopes[i - 1] * r_back
            curvature = self.curvatures[i - 1]
            if curvature is not None:
                back = torch.matmul(delta, w.transpose(-1, -2))
                r_delta = r_delta + curvature * r_pre[i - 1] * back
        return torch.cat(parts, dim=-1)
