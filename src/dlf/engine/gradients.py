"""The training step's F and ∂F/∂θ for every member, without autograd where that is faster.

The trainer needs, at every step, the loss F_m(θ_m; Γ_m) and its gradient for all members, and at
recorded steps the static loss and the training accuracy at the same point. :func:`gradient_for`
returns the fastest object that computes them for the run's model, loss and device:

- :class:`KernelGradient`, on a CPU for the papers' network (one hidden ReLU layer, a few inputs,
  built-in losses, full batch): a small C kernel compiled for this machine on first use (cached
  on disk) that runs each member's forward and backward pass in vector registers, never storing
  the samples × width activations; members are spread over ``torch.get_num_threads()`` OpenMP
  threads (torch's own pool where torch's libgomp is the one loaded).
- :class:`FusedGradient`, for the toolkit's MLP and built-in losses otherwise (GPU, tanh, deeper
  nets, minibatches, or no C compiler): the forward and backward passes written out by hand as
  batched matrix products (members are the batch), so no autograd graph is built, the ReLU mask
  is the stored activation itself, the bias of the first layer rides in the input matrix (``[x,
  1]`` times the ``[W; b]`` block that θ already stores contiguously), and buffers are reused.
- :class:`AutogradGradient` for everything else (plugin losses or models): ``torch.autograd``.

All give the same numbers to rounding (``tests/test_fastpath.py``), and each member's result
depends on its own row only, so a member trained in an ensemble follows exactly the trajectory
it follows alone.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from dlf.errors import DlfWarning
from dlf.numerics.losses import (
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

log = logging.getLogger(__name__)

CACHE_BYTES = 8 * 2**20  # CPU: rows per pass chosen so that one activation buffer is about this big

# The built-in loss functions the fast paths know how to differentiate, by kind.
KINDS: dict[Callable[..., torch.Tensor], str] = {
    weighted_cross_entropy: "ce",  # (1/P) Σ_j Γ_{y_j} CE_j
    weighted_squared_error: "se",  # (1/P) Σ_j Γ_{y_j} Σ_i (f_i − δ_{i,y_j})²
    scaled_target_squared_error: "st",  # (1/P) Σ_j Σ_i (f_i − Γ_i δ_{i,y_j})²
}


def accuracy(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Fraction of samples whose arg-max logit (along ``dim``) is the label, per member.

    ``torch.max(...).indices`` is ``argmax`` (the first of equal maxima), and much faster than
    ``argmax`` along a dimension that is not the last."""
    return (torch.max(logits, dim=dim).indices == labels).to(logits.dtype).mean(dim=-1)


class Gradient(Protocol):
    """F and ∂F/∂θ per member, and the step's metrics at the same point."""

    name: str  # kernel, fused or autograd: recorded in the trace

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

    def evaluate(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Static loss and accuracy ``(R,)`` of ``theta`` on ``(x, y)``, without a gradient."""
        ...


def gradient_for(objective: Objective) -> Gradient:
    """The compiled kernel, else the fused pass, where they apply to ``objective``; or autograd."""
    if KernelGradient.supports(objective):
        function = kernel_function(objective.x.dtype)
        if function is not None:
            return KernelGradient(objective, function)
    if FusedGradient.supports(objective):
        return FusedGradient(objective)
    return AutogradGradient(objective)


def why_chosen(objective: Objective) -> str:
    """Why :func:`gradient_for` picked its path for ``objective`` (the trace records it)."""
    if KernelGradient.supports(objective):
        problem = KERNEL_PROBLEMS.get(objective.x.dtype)
        if problem is None:
            return "one hidden ReLU layer on a CPU: the compiled C kernel (minibatches: fused)"
        return f"the C kernel could not be built ({problem})"
    if FusedGradient.supports(objective):
        return (
            f"the C kernel covers one hidden ReLU layer, <= {KERNEL_MAX_INPUTS} inputs, float32 or "
            "float64, on a CPU; this run is outside that"
        )
    return "the model or a loss is not one the hand-fused passes cover"


class FastPathWarning(DlfWarning):
    """Training runs, but slower than it could on this machine (e.g. no C compiler)."""


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


# --- the compiled kernel ------------------------------------------------------------------------

KERNEL_SOURCE = r"""
/* F and dF/dθ of a one-hidden-layer ReLU MLP, full batch, for every row of θ (dlf.engine).
 * Compiled once per dtype: -DREAL=float -DMASK=int32_t -DSUFFIX=f32, or double/int64_t/f64.
 * Per row: the forward pass vectorised over samples, the loss and its gradient d vectorised over
 * samples (libmvec exp/log), the backward pass vectorised over hidden units with the
 * pre-activations recomputed, so nothing of size samples × width is ever stored. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern float logf(float);
#pragma omp declare simd notinbranch
extern double log(double);

#define LANES (64 / (int)sizeof(REAL))
#define EXP(v) (sizeof(REAL) == 4 ? expf(v) : exp(v))
#define LOG(v) (sizeof(REAL) == 4 ? logf(v) : log(v))
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
typedef REAL vec __attribute__((vector_size(64)));
typedef MASK mvec __attribute__((vector_size(64)));
#define IF_POSITIVE(z, v) ((vec)((mvec)(v) & ((z) > 0))) /* v where z > 0, else 0 */

enum { CE = 0, SE = 1, ST = 2 }; /* Γ_y·CE, Γ_y·Σ(f−onehot)², Σ(f−Γ·onehot)² */

/* Shapes: P samples (padded to pp), ni1 = inputs + 1, nc classes, h hidden units (padded to hp).
 * xt: columns of [x, 1] (ni1 × pp). Scratch: w1, g1 (ni1 × hp), w2t, g2t (nc × hp), f (nc × pp),
 * s (see the loss below).
 * out: F, static loss, accuracy. */
static inline __attribute__((always_inline)) void row(
    int P, int pp, int ni1, int nc, int h, int hp, int kind, int static_kind, int active,
    const vec *xt, const REAL *x, const int64_t *y, const REAL *theta, const REAL *gamma,
    REAL *grad, REAL *out, vec *w1, vec *w2t, vec *g1, vec *g2t, REAL *f, REAL *s) {
    const REAL *w2 = theta + ni1 * h, *b2 = w2 + h * nc;
    int nq = pp / LANES, nv = hp / LANES;
    /* forward, vectorised over samples, two vectors at a time (independent sums):
     * f[c] = b2[c] + Σ_k relu(Σ_i x_i W1[i,k]) W2[k,c] */
    for (int q = 0; q < nq; q += 2) {
        vec acc[2][nc];
        for (int c = 0; c < nc; c++) acc[0][c] = acc[1][c] = (vec){0} + b2[c];
        for (int k = 0; k < h; k++) {
            vec z0 = xt[q] * theta[k], z1 = xt[q + 1] * theta[k];
            for (int i = 1; i < ni1; i++) {
                z0 += xt[i * nq + q] * theta[i * h + k];
                z1 += xt[i * nq + q + 1] * theta[i * h + k];
            }
            z0 = IF_POSITIVE(z0, z0), z1 = IF_POSITIVE(z1, z1);
            for (int c = 0; c < nc; c++) {
                acc[0][c] += z0 * w2[k * nc + c];
                acc[1][c] += z1 * w2[k * nc + c];
            }
        }
        for (int c = 0; c < nc; c++) {
            ((vec *)f)[c * nq + q] = acc[0][c];
            ((vec *)f)[c * nq + q + 1] = acc[1][c];
        }
    }
    /* loss, static loss, accuracy, and f becomes d = ∂F/∂f: loops over samples, vectorised.
     * s: scratch: top logit, its class, f_y, Γ_y, Σ(f−onehot)², Σexp, −log p_y (pp each), and
     * exp(f − top) (nc × pp) */
    REAL *top = s, *best = s + pp, *fy = s + 2 * pp, *w = s + 3 * pp, *sq = s + 4 * pp;
    REAL *tot = s + 5 * pp, *nll = s + 6 * pp, *e = s + 7 * pp;
#pragma omp simd
    for (int p = 0; p < P; p++) top[p] = fy[p] = f[p], best[p] = 0, w[p] = gamma[y[p]];
    for (int c = 1; c < nc; c++)
#pragma omp simd
        for (int p = 0; p < P; p++) {
            REAL v = f[c * pp + p];
            best[p] = v > top[p] ? c : best[p];
            top[p] = v > top[p] ? v : top[p];
            fy[p] = y[p] == c ? v : fy[p];
        }
#pragma omp simd
    for (int p = 0; p < P; p++) sq[p] = tot[p] = nll[p] = 0;
    for (int c = 0; c < nc; c++)
#pragma omp simd
        for (int p = 0; p < P; p++) {
            REAL r = f[c * pp + p] - (y[p] == c);
            sq[p] += r * r;
        }
    if (kind == CE || static_kind == CE) {
        for (int c = 0; c < nc; c++)
#pragma omp simd
            for (int p = 0; p < P; p++) tot[p] += e[c * pp + p] = EXP(f[c * pp + p] - top[p]);
#pragma omp simd
        for (int p = 0; p < P; p++) nll[p] = LOG(tot[p]) - (fy[p] - top[p]);
    }
    REAL loss = 0, stat = 0, correct = 0;
#pragma omp simd reduction(+ : loss, stat, correct)
    for (int p = 0; p < P; p++) {
        loss += kind == CE ? w[p] * nll[p] : kind == SE ? w[p] * sq[p] : 0;
        stat += static_kind == CE ? nll[p] : sq[p];
        correct += best[p] == y[p];
    }
    for (int c = 0; c < nc; c++) {
        REAL *fc = f + c * pp, g = gamma[c];
#pragma omp simd reduction(+ : loss)
        for (int p = 0; p < P; p++) {
            REAL t = y[p] == c, r = fc[p] - t * g;
            loss += kind == ST ? r * r : 0;
            fc[p] = (kind == CE   ? w[p] * (e[c * pp + p] / tot[p] - t)
                     : kind == SE ? 2 * w[p] * (fc[p] - t)
                                  : 2 * r) / P;
        }
    }
    out[0] = loss / P, out[1] = stat / P, out[2] = correct / P;
    if (!active) {
        memset(grad, 0, sizeof(REAL) * (ni1 * h + h * nc + nc));
        return;
    }
    /* backward, vectorised over hidden units, z recomputed: ∂F/∂W2[k,c] = Σ_p relu(z_pk) d_pc,
     * ∂F/∂[W1; b1][i,k] = Σ_p x_pi 1[z_pk > 0] Σ_c W2[k,c] d_pc */
    memset(w1, 0, sizeof(REAL) * ni1 * hp);
    memset(w2t, 0, sizeof(REAL) * nc * hp);
    for (int i = 0; i < ni1; i++) memcpy((REAL *)w1 + i * hp, theta + i * h, sizeof(REAL) * h);
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) ((REAL *)w2t)[c * hp + k] = w2[k * nc + c];
    for (int v = 0; v < nv; v++) {
        vec a1[ni1], a2[nc];
        for (int i = 0; i < ni1; i++) a1[i] = (vec){0};
        for (int c = 0; c < nc; c++) a2[c] = (vec){0};
        for (int p = 0; p < P; p++) {
            const REAL *xp = x + p * ni1;
            vec z = xp[0] * w1[v], dh = f[p] * w2t[v];
            for (int i = 1; i < ni1; i++) z += xp[i] * w1[i * nv + v];
            for (int c = 1; c < nc; c++) dh += f[c * pp + p] * w2t[c * nv + v];
            vec hv = IF_POSITIVE(z, z), dz = IF_POSITIVE(z, dh);
            for (int c = 0; c < nc; c++) a2[c] += f[c * pp + p] * hv;
            for (int i = 0; i < ni1; i++) a1[i] += xp[i] * dz;
        }
        for (int i = 0; i < ni1; i++) g1[i * nv + v] = a1[i];
        for (int c = 0; c < nc; c++) g2t[c * nv + v] = a2[c];
    }
    for (int i = 0; i < ni1; i++) memcpy(grad + i * h, (REAL *)g1 + i * hp, sizeof(REAL) * h);
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) grad[ni1 * h + k * nc + c] = ((REAL *)g2t)[c * hp + k];
    for (int c = 0; c < nc; c++) {
        REAL s = 0;
        for (int p = 0; p < P; p++) s += f[c * pp + p];
        grad[ni1 * h + h * nc + c] = s;
    }
}

/* All rows, on up to `threads` OpenMP threads (torch's own pool where torch's libgomp is the one
 * loaded). x: [x, 1] (P × ni1); theta, grad: rows × (ni1·h + h·nc + nc); gamma: rows × nc;
 * active: rows; out: rows × 3. Returns 0, or -1 if memory ran out. */
int CAT(mlp_step, SUFFIX)(int rows, int P, int ni1, int nc, int h, int kind, int static_kind,
                          const REAL *x, const int64_t *y, const REAL *theta, const REAL *gamma,
                          const uint8_t *active, REAL *grad, REAL *out, int threads) {
    int n = ni1 * h + h * nc + nc, hp = (h + LANES - 1) / LANES * LANES;
    int pp = (P + 2 * LANES - 1) / (2 * LANES) * 2 * LANES, failed = 0; /* pairs of vectors */
    vec *xt = aligned_alloc(64, sizeof(REAL) * ni1 * pp);
    if (!xt) return -1;
    memset(xt, 0, sizeof(REAL) * ni1 * pp);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < ni1; i++) ((REAL *)xt)[i * pp + p] = x[p * ni1 + i];
#pragma omp parallel num_threads(threads < rows ? threads : rows) reduction(| : failed)
    {
        vec *buf = aligned_alloc(64, sizeof(REAL) * (2 * (ni1 + nc) * hp + (2 * nc + 7) * pp));
        vec *w1 = buf, *g1 = w1 + ni1 * hp / LANES, *w2t = g1 + ni1 * hp / LANES;
        vec *g2t = w2t + nc * hp / LANES;
        REAL *f = (REAL *)(g2t + nc * hp / LANES), *s = f + nc * pp;
        failed = !buf;
#pragma omp for schedule(dynamic, 1)
        for (int m = 0; m < rows; m++) {
            if (!buf) continue;
            const REAL *th = theta + (int64_t)m * n, *gm = gamma + m * nc;
            REAL *g = grad + (int64_t)m * n, *o = out + 3 * m;
            if (ni1 == 3 && nc == 3) /* the spiral: constant sizes, loops unrolled */
                row(P, pp, 3, 3, h, hp, kind, static_kind, active[m], xt, x, y, th, gm, g, o, w1,
                    w2t, g1, g2t, f, s);
            else
                row(P, pp, ni1, nc, h, hp, kind, static_kind, active[m], xt, x, y, th, gm, g, o,
                    w1, w2t, g1, g2t, f, s);
        }
        free(buf);
    }
    free(xt);
    return failed ? -1 : 0;
}
"""
KERNEL_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
KERNEL_LIBS = ("-lmvec", "-lm")  # libmvec: glibc's vectorised exp and log
KERNEL_TYPES = {
    torch.float32: ("float", "int32_t", "f32"),
    torch.float64: ("double", "int64_t", "f64"),
}
KIND_CODES = {"ce": 0, "se": 1, "st": 2}  # the kernel's enum
# Each sample updates (inputs + 1) gradient accumulators per block of hidden units: beyond a few
# inputs the fused pass's matrix products are faster (digits, 64 inputs: 0.8× of the fused pass).
KERNEL_MAX_INPUTS = 8


def kernel_cache() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/dlf-study`` (``~/.cache/dlf-study``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlf-study"


def _machine() -> str:
    """The CPU's model and feature flags: a kernel built with -march=native runs only there."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    return "".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


KERNEL_PROBLEMS: dict[torch.dtype, str] = {}  # why the kernel is unavailable, per dtype


@functools.cache
def kernel_function(dtype: torch.dtype) -> Callable[..., int] | None:
    """The C kernel's entry point for ``dtype``, compiled on first use; None where it cannot be
    built (no C compiler ``$CC``/``cc``, no glibc libmvec, another dtype)."""
    if dtype not in KERNEL_TYPES:
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        KERNEL_PROBLEMS[dtype] = f"no C compiler {os.environ.get('CC', 'cc')!r} on PATH"
        warnings.warn(
            f"{KERNEL_PROBLEMS[dtype]}: training uses the slower torch fused pass "
            "(install a C compiler, or set $CC, for the kernel)",
            FastPathWarning,
            stacklevel=2,
        )
        return None
    real, mask, suffix = KERNEL_TYPES[dtype]
    defines = (f"-DREAL={real}", f"-DMASK={mask}", f"-DSUFFIX={suffix}")
    command = [compiler, *KERNEL_FLAGS, *defines]
    key = hashlib.sha256("\n".join([KERNEL_SOURCE, *command, _machine()]).encode()).hexdigest()
    path = kernel_cache() / f"mlp_step_{suffix}_{key[:16]}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                source, built = Path(tmp) / "mlp_step.c", Path(tmp) / "mlp_step.so"
                source.write_text(KERNEL_SOURCE)
                subprocess.run(
                    [*command, str(source), "-o", str(built), *KERNEL_LIBS],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                os.replace(built, path)  # atomic: concurrent builders never see half a file
        function = getattr(ctypes.CDLL(str(path)), f"mlp_step_{suffix}")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = str(getattr(exc, "stderr", "") or exc).strip().splitlines()
        KERNEL_PROBLEMS[dtype] = (detail[0] if detail else "the build failed")[:200]
        log.info("C kernel not built (%s): training uses the torch fused pass", detail)
        return None
    function.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 7 + [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


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
        return (
            FusedGradient.supports(objective)
            and len(objective.model.hidden) == 1
            and objective.model.activation == "relu"
            and objective.model.n_in <= KERNEL_MAX_INPUTS
            and objective.x.device.type == "cpu"
            and objective.x.dtype in KERNEL_TYPES
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
