"""Hessian-vector products in the C kernel ``dlf/kernels/mlp_hvp.c``: the papers' network on a CPU.

One hidden ReLU layer, few inputs, built-in losses, full batch, float32/float64 on a CPU — the
case where training runs in ``mlp_step.c`` too. There a torch HVP (:mod:`~dlf.curvature.fused_hvp`)
costs some 15 training steps, nearly all of it per-op overhead; the kernel does the whole
R-operator pass (forward, tangent, loss Hessian, backward) in one call batched over members on
torch's OpenMP threads. The same source holds λmax's k = 1 Lanczos loop around these products
(``mlp_top_pair``, :mod:`~dlf.curvature.top_pair`). Elsewhere (GPU, tanh, depth 2) the fused
torch pass stays, and autograd for plugin models and losses.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

from dlf import kernels
from dlf.curvature import fused_hvp
from dlf.curvature.lanczos import BREAKDOWN, LanczosResult
from dlf.numerics.losses import (
    scaled_target_squared_error,
    weighted_cross_entropy,
    weighted_squared_error,
)
from dlf.numerics.models import MLP
from dlf.numerics.objective import Objective

KIND_CODES: dict[Callable[..., torch.Tensor], int] = {
    weighted_cross_entropy: 0,
    weighted_squared_error: 1,
    scaled_target_squared_error: 2,
}


@functools.cache
def kernel_function(dtype: torch.dtype) -> Callable[..., int] | None:
    """The kernel's entry point for ``dtype`` with its ctypes signature (None if not built)."""
    return kernels.entry("mlp_hvp", dtype, ints=6, pointers=6)


@functools.cache
def top_pair_function(dtype: torch.dtype) -> Callable[..., int] | None:
    """The kernel's own k = 1 Lanczos loop (``mlp_top_pair``) for ``dtype``, or None."""
    function = kernels.load("mlp_hvp", dtype, "mlp_top_pair")
    if function is not None:
        function.argtypes = (
            [ctypes.c_int] * 6
            + [ctypes.c_void_p] * 6
            + [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int]
            + [ctypes.c_void_p] * 5
            + [ctypes.c_int]
        )
        function.restype = ctypes.c_int
    return function


def supports(objective: Objective, dtype: torch.dtype) -> bool:
    """Whether the kernel covers this objective at parameters of ``dtype`` (and builds here)."""
    model = objective.model
    return (
        fused_hvp.supports(objective)
        and isinstance(model, MLP)
        and len(model.hidden) == 1
        and model.activation == "relu"
        and model.n_in <= kernels.MAX_INPUTS
        and objective.x.device.type == "cpu"
        and dtype in kernels.TYPES
        and kernel_function(dtype) is not None
    )


@functools.lru_cache(maxsize=8)
def _with_ones(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[x, 1]`` in ``dtype``, contiguous: built once per data set, not at every sampled step."""
    x = x.to(dtype)
    return torch.cat([x, torch.ones(len(x), 1, dtype=dtype, device=x.device)], dim=1).contiguous()


class KernelHVP:
    """``H v`` at fixed (θ, Γ) of F or of the static loss; call it with ``v (M, n)``."""

    def __init__(
        self, objective: Objective, theta: torch.Tensor, gamma: torch.Tensor, static: bool
    ) -> None:
        loss = objective.static if static else objective.loss
        self.kind = KIND_CODES[loss.fn]
        function = kernel_function(theta.dtype)
        assert function is not None, "KernelHVP where supports() is False"
        self.function = function
        self.inputs = _with_ones(objective.x, theta.dtype)
        self.labels = objective.y.contiguous()
        self.theta = theta.contiguous()
        self.gamma = (torch.ones_like(gamma) if static else gamma).contiguous()
        self.width = objective.model.width
        self.pointers = [t.data_ptr() for t in (self.inputs, self.labels, self.theta, self.gamma)]

    def _problem(self, rows: int) -> tuple[int, ...]:
        """The kernel's leading arguments, the same for both entry points: sizes, the loss's
        code and the data pointers."""
        (samples, inputs), classes = self.inputs.shape, self.gamma.shape[1]
        return (rows, samples, inputs, classes, self.width, self.kind, *self.pointers)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``(H_m v_m)_m`` for ``v (M, n)``."""
        v = v.contiguous()
        out = torch.empty_like(v)
        status = self.function(
            *self._problem(self.gamma.shape[0]),
            v.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("the C HVP kernel could not allocate its scratch memory")
        return out

    def top_pair(
        self,
        start: torch.Tensor,
        tol: float,
        max_iter: int,
        min_iter: torch.Tensor,
        first: torch.Tensor | None = None,
    ) -> tuple[LanczosResult, torch.Tensor]:
        """λmax of every row by the kernel's Lanczos loop, products included: the algorithm of
        :mod:`dlf.curvature.top_pair` in one call. Returns the result and H·start/‖start‖
        (``first`` if given, else computed). ``min_iter`` is ``(rows,)`` int64."""
        function = top_pair_function(self.theta.dtype)
        assert function is not None
        start = start.contiguous()
        hv0 = torch.empty_like(start) if first is None else first.contiguous()
        rows = len(start)
        value, residual = start.new_empty(rows), start.new_empty(rows)
        matvecs, vector = torch.empty(rows, dtype=torch.int64), torch.empty_like(start)
        least = min_iter.to(torch.int64).contiguous()
        status = function(
            *self._problem(rows),
            start.data_ptr(),
            hv0.data_ptr(),
            int(first is not None),
            tol,
            BREAKDOWN,
            max_iter,
            least.data_ptr(),
            value.data_ptr(),
            residual.data_ptr(),
            matvecs.data_ptr(),
            vector.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("the C Lanczos kernel could not allocate its scratch memory")
        result = LanczosResult(value[:, None], vector[:, None], residual[:, None], matvecs)
        return result, hv0
