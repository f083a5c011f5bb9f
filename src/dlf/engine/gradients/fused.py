"""The fused path: the built-in MLP's forward and backward written out as batched products."""

from __future__ import annotations

import torch

from dlf.engine.gradients.base import KINDS, accuracy
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

CACHE_BYTES = 8 * 2**20  # CPU: rows per pass chosen so that one activation buffer is about this big


class FusedGradient:
    """Hand-written forward and backward of the built-in MLP for the built-in losses.

    Activations are kept as ``(R, P, width)`` (rows of θ are the batch of every product); the
    logits and their gradient as ``(R, class, P)``, the orientation in which the products with the
    few-class output layer run fastest. With one hidden layer and few inputs and classes (the
    papers' network on the spiral) the backward pass is a single product, see
    :meth:`backward_shallow`.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        assert isinstance(objective.model, MLP)  # supports() admits only the MLP
        self.model: MLP = objective.model
        self.kind = KINDS[objective.loss.fn]
        self.static_kind = KINDS[objective.static.fn]
        self.relu = self.model.activation == "relu"
        # One hidden layer with few inputs and classes (the spiral's 3 × 3): the backward pass is
        # one product with (in + 1)·C rows, no more work than back-propagation's (in + 1) + 2C.
        inputs, classes = self.model.n_in + 1, self.model.n_out
        self.shallow = len(self.model.hidden) == 1 and inputs * classes <= inputs + 2 * classes
        self.activate = torch.relu_ if self.relu else torch.tanh_
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
        self._last: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None

    name = "fused"

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

    def buffers(self, rows: int, samples: int) -> list[torch.Tensor]:
        """``(rows, P, width)`` per hidden layer, reused across steps: the activations, then
        (when back-propagating layer by layer) the gradients with respect to them."""
        key = (rows, samples)
        if key not in self._buffers:
            copies = 1 if self.shallow else 2
            x = self.objective.x
            self._buffers[key] = [
                torch.empty(rows, samples, width, dtype=x.dtype, device=x.device)
                for _ in range(copies)
                for width in self.model.hidden
            ]
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

    def chunk_rows(self, theta: torch.Tensor, samples: int) -> int:
        """Rows per pass: on a CPU, as many as keep one activation buffer near ``CACHE_BYTES``."""
        if theta.device.type != "cpu":
            return theta.shape[0]
        per_row = samples * max(self.model.hidden) * theta.element_size()
        return max(1, CACHE_BYTES // per_row)

    def __call__(self, theta, gamma, active, x, y):
        rows, samples = theta.shape[0], x.shape[-2]
        grad = torch.empty_like(theta)
        size = self.chunk_rows(theta, samples)
        losses, logits, per_sample = [], [], []
        for start in range(0, rows, size):
            part = slice(start, start + size)
            x_part, y_part = (x[part], y[part]) if x.dim() == 3 else (x, y)
            loss, logits_t, per = self.pass_(
                theta[part], gamma[part], active[part], x_part, y_part, grad[part]
            )
            losses.append(loss)
            logits.append(logits_t)
            per_sample.append(per)
        self._last = (logits, per_sample, y)
        return (losses[0] if len(losses) == 1 else torch.cat(losses)), grad

    def pass_(self, theta, gamma, active, x, y, grad):
        """F, the logits ``(R, C, P)`` and the per-sample loss; ∂F/∂θ written into ``grad``."""
        depth = len(self.model.hidden)
        xa, xa_t = self.augmented(x)
        weights, grads = self.blocks(theta), self.blocks(grad)
        logits_t, w_out_t, buffers = self.forward_(weights, xa)
        hidden = buffers[:depth]
        loss, d_logits_t, per_sample = self.loss_and_gradient(logits_t, gamma, active, y)
        torch.sum(d_logits_t, dim=2, out=grads[-1][:, -1])
        if self.shallow:
            self.backward_shallow(xa_t, d_logits_t, hidden[0], weights, w_out_t, grads)
        else:
            self.backward_deep(xa_t, d_logits_t, hidden, buffers[depth:], weights, w_out_t, grads)
        return loss, logits_t, per_sample

    def forward_(self, weights: list[torch.Tensor], xa: torch.Tensor):
        """Logits ``(R, C, P)``, W_out transposed, and the buffers, the hidden activations first.

        h_1 = act([x, 1] · [W_1; b_1]), h_l = act(h_{l-1} W_l + b_l), stored in place.
        """
        rows, samples, depth = weights[0].shape[0], xa.shape[-2], len(self.model.hidden)
        buffers = [b[:rows] for b in self.buffers(self.chunk_rows(weights[0], samples), samples)]
        hidden = buffers[:depth]
        torch.bmm(xa.expand(rows, -1, -1), weights[0], out=hidden[0])
        self.activate(hidden[0])
        for layer in range(1, depth):
            w, b = weights[layer][:, :-1], weights[layer][:, -1:]
            torch.baddbmm(b, hidden[layer - 1], w, out=hidden[layer])
            self.activate(hidden[layer])
        w_out_t = weights[-1][:, :-1].transpose(1, 2).contiguous()  # (R, C, width)
        logits_t = torch.baddbmm(
            weights[-1][:, -1].unsqueeze(-1), w_out_t, hidden[-1].transpose(1, 2)
        )
        return logits_t, w_out_t, buffers

    def evaluate(self, theta, x, y):
        size = self.chunk_rows(theta, x.shape[-2])
        static, correct = [], []
        for start in range(0, theta.shape[0], size):
            part = slice(start, start + size)
            x_part, y_part = (x[part], y[part]) if x.dim() == 3 else (x, y)
            logits_t, _, _ = self.forward_(self.blocks(theta[part]), self.augmented(x_part)[0])
            static.append(self.static_per_sample(logits_t, y_part).mean(dim=1))
            correct.append(accuracy(logits_t, y_part, dim=1))
        return torch.cat(static), torch.cat(correct)

    def backward_shallow(self, xa_t, d_logits_t, h, weights, w_out_t, grads) -> None:
        """Weight gradients of a one-hidden-layer network from one product over the samples.

        ∂F/∂h_j = W₂ d_j has rank C, so with ``a_j = [x_j, 1] ⊗ d_j`` (``(in+1)·C`` numbers) and
        ``E = Σ_j a_j σ'(z_j)ᵀ``, the first layer's gradient is ``Σ_c W₂[k, c] E[i, c, k]``.
        For ReLU, h = z·1[z > 0] with z linear in [x, 1], so the output layer's Σ_j h_j d_jᵀ is
        ``Σ_i W₁[i, k] E[i, c, k]`` as well: the (R, P, width) activations are read by one
        product, and no gradient of that size is ever formed.
        """
        rows, inputs, width = weights[0].shape
        classes = d_logits_t.shape[1]
        a = (xa_t.unsqueeze(2) * d_logits_t.unsqueeze(1)).flatten(1, 2)  # (R, (in+1)·C, P)
        if self.relu:
            e = torch.bmm(a, h.sign_()).view(rows, inputs, classes, width)
            out_grad_t = (weights[0].unsqueeze(2) * e).sum(dim=1)  # (R, C, width)
        else:
            out_grad_t = torch.bmm(d_logits_t, h)
            slope = torch.addcmul(h.new_ones(()), h, h, value=-1, out=h)  # tanh' = 1 − h²
            e = torch.bmm(a, slope).view(rows, inputs, classes, width)
        grads[-1][:, :-1].copy_(out_grad_t.transpose(1, 2))
        torch.sum(w_out_t.unsqueeze(1) * e, dim=2, out=grads[0])

    def backward_deep(self, xa_t, d_logits_t, hidden, d_hidden, weights, w_out_t, grads) -> None:
        """Back-propagation layer by layer."""
        rows = weights[0].shape[0]
        torch.bmm(d_logits_t, hidden[-1], out=grads[-1][:, :-1].transpose(1, 2))
        d_h = torch.bmm(d_logits_t.transpose(1, 2), w_out_t, out=d_hidden[-1])
        for layer in range(len(hidden) - 1, 0, -1):
            d_z = self.derivative_(d_h, hidden[layer])
            w = weights[layer][:, :-1]
            torch.bmm(hidden[layer - 1].transpose(1, 2), d_z, out=grads[layer][:, :-1])
            torch.sum(d_z, dim=1, out=grads[layer][:, -1])
            d_h = torch.bmm(d_z, w.transpose(1, 2), out=d_hidden[layer - 1])
        d_z = self.derivative_(d_h, hidden[0])
        torch.bmm(xa_t.expand(rows, -1, -1), d_z, out=grads[0])

    def derivative_(self, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``grad · σ'`` in place, from the stored activation ``out``: 1[out > 0] or 1 − out²."""
        if self.relu:
            return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)
        return torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)

    def loss_and_gradient(
        self, logits_t: torch.Tensor, gamma: torch.Tensor, active: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """F ``(R,)``, ∂(Σ_active F)/∂logits ``(R, C, P)`` and the unweighted per-sample loss
        ``(R, P)`` (None for DMSE2, whose Γ is inside the square) from the logits ``(R, C, P)``."""
        samples = logits_t.shape[-1]
        onehot_t = self.one_hot_t(y, logits_t)
        if self.kind == "st":
            residual = logits_t - onehot_t * gamma.unsqueeze(-1)
            loss = residual.square().sum(dim=1).mean(dim=1)
            scale = active.to(logits_t.dtype) * (2.0 / samples)
            return loss, residual * scale[:, None, None], None
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
        return (weight * per_sample).mean(dim=1), d_logits_t, per_sample

    def metrics(self):
        assert self._last is not None, "metrics() before the first gradient"
        logits, per_sample, y = self._last
        logits_t = logits[0] if len(logits) == 1 else torch.cat(logits)
        if self.static_kind == self.kind:
            per = per_sample[0] if len(per_sample) == 1 else torch.cat(per_sample)
        else:
            per = self.static_per_sample(logits_t, y)
        return per.mean(dim=1), accuracy(logits_t, y, dim=1)

    def static_per_sample(self, logits_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The static loss of each sample ``(R, P)`` from the logits ``(R, C, P)``."""
        if self.static_kind == "ce":
            labels = y.expand(logits_t.shape[0], -1).unsqueeze(1)
            return torch.logsumexp(logits_t, dim=1) - logits_t.gather(1, labels).squeeze(1)
        return (logits_t - self.one_hot_t(y, logits_t)).square().sum(dim=1)
