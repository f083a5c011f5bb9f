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

from dlf import kernels
from dlf.engine.gradients.autograd import AutogradGradient
from dlf.engine.gradients.base import KINDS, Gradient, accuracy
from dlf.engine.gradients.fused import FusedGradient
from dlf.engine.gradients.kernel import KernelGradient, kernel_function
from dlf.kernels import FastPathWarning
from dlf.numerics.objective import Objective

__all__ = [
    "KINDS",
    "AutogradGradient",
    "FastPathWarning",
    "FusedGradient",
    "Gradient",
    "KernelGradient",
    "accuracy",
    "gradient_for",
    "kernel_function",
    "why_chosen",
]


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
        problem = kernels.PROBLEMS.get(("mlp_step", objective.x.dtype))
        if problem is None:
            return "one hidden ReLU layer on a CPU: the compiled C kernel (minibatches: fused)"
        return f"the C kernel could not be built ({problem})"
    if FusedGradient.supports(objective):
        return (
            f"the C kernel covers one hidden ReLU layer, <= {kernels.MAX_INPUTS} inputs, float32 "
            "or float64, on a CPU; this run is outside that"
        )
    return "the model or a loss is not one the hand-fused passes cover"
