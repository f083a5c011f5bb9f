"""Ensemble models whose parameters live in one flat ``(member, n_params)`` tensor.

Keeping every member's parameters in one row of a single tensor makes the ensemble a batch: the
forward pass is a batched matrix product, gradient descent is one fused update, and curvature code
(Hessian-vector products, Lanczos, landscape slices) works on plain vectors per member.

:class:`MLP` is the built-in network, written out so that the hand-fused gradient paths and the C
kernel can run it. :class:`ModuleModel` puts any ``torch.nn.Module`` behind the same flat θ: its
members' parameters are stacked (``torch.func.stack_module_state``) into rows of θ and the forward
pass is ``torch.func.functional_call`` vectorised over members with ``torch.func.vmap`` (or, where
that is slower, called once per member: ``ensemble="loop"``), so the autograd gradient path
and every analyzer work on it unchanged.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
}
INITS = ("standard", "glorot")
EnsembleWay = Literal["vmap", "loop"]


@dataclass(frozen=True)
class MLP:
    """A fully connected network ``in → hidden… → out`` applied to many members at once."""

    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    activation: str = "relu"

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        dims = [self.n_in, *self.hidden, self.n_out]
        return list(itertools.pairwise(dims))

    @property
    def n_params(self) -> int:
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.layer_sizes)

    @property
    def width(self) -> int:
        """The first hidden layer's width (the papers' "network width")."""
        return self.hidden[0] if self.hidden else 0

    def unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views ``(W, b)`` per layer of ``theta[..., n]``; W is ``(..., fan_in, fan_out)``."""
        lead = theta.shape[:-1]
        layers, offset = [], 0
        for fan_in, fan_out in self.layer_sizes:
            w = theta[..., offset : offset + fan_in * fan_out].reshape(*lead, fan_in, fan_out)
            offset += fan_in * fan_out
            b = theta[..., offset : offset + fan_out]
            offset += fan_out
            layers.append((w, b))
        return layers

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(member, sample, out)`` for ``theta (member, n)``; ``x`` shared or per member.

        ``x`` is ``(sample, in)`` (the same inputs for every member) or ``(member, sample, in)``.
        """
        act = ACTIVATIONS[self.activation]
        layers = self.unflatten(theta)
        h = x
        for i, (w, b) in enumerate(layers):
            h = torch.matmul(h, w) + b.unsqueeze(-2)
            if i < len(layers) - 1:
                h = act(h)
        return h

    def init(
        self,
        seeds: Sequence[int],
        scheme: str = "standard",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Initial parameters ``(len(seeds), n_params)``, each row drawn from its own seed.

        ``standard``: W ~ N(0, 1/fan_in), b = 0 (the 2021 notebooks).
        ``glorot``: W ~ N(0, 2/(fan_in+fan_out)), b ~ N(0, 0.01²) (the 2022 update).
        A member's row depends only on its seed, so a member of an ensemble starts exactly where
        the same seed trained alone starts.
        """
        if scheme not in INITS:
            raise ValueError(f"unknown init {scheme!r}; allowed: {', '.join(INITS)}")
        rows = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            parts = []
            for fan_in, fan_out in self.layer_sizes:
                if scheme == "standard":
                    w_std, b_std = 1.0 / math.sqrt(fan_in), 0.0
                else:
                    w_std, b_std = math.sqrt(2.0 / (fan_in + fan_out)), 0.01
                parts.append(
                    torch.randn(fan_in * fan_out, generator=gen, dtype=torch.float64) * w_std
                )
                parts.append(torch.randn(fan_out, generator=gen, dtype=torch.float64) * b_std)
            rows.append(torch.cat(parts))
        return torch.stack(rows).to(dtype=dtype, device=device)


def mlp(
    input_shape: tuple[int, ...], n_classes: int, *, width: int, depth: int, activation: str
) -> MLP:
    """The built-in ``mlp`` model: ``depth`` hidden layers of ``width`` units on flat inputs."""
    return MLP(math.prod(input_shape), (width,) * depth, n_classes, activation)


@dataclass(frozen=True, eq=False)
class ModuleModel:
    """A ``torch.nn.Module`` trained as an ensemble behind a flat θ ``(member, n_params)``.

    ``factory()`` builds one member's module, drawing its initial parameters from torch's global
    generator (:meth:`init` seeds it per member, so a member starts where the same seed trained
    alone starts). Inputs arrive flat, ``(..., prod(input_shape))``, as every data set stores them,
    and are reshaped to ``(sample, *input_shape)`` for the module.

    The module must hold no buffers: a buffer that the forward pass updates (BatchNorm's running
    statistics) has no place in a function of θ alone; GroupNorm or LayerNorm have none.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    n_out: int
    width: int = 0  # the value of the model's declared size option (ModelEntry.width), else 0
    width_label: str = "hidden width"  # what ``width`` counts, e.g. "myrtle5 channels"
    ensemble: EnsembleWay = "vmap"  # how the members' forward passes are batched
    _template: nn.Module = field(init=False, repr=False)
    _shapes: dict[str, torch.Size] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        module = self._build(0)
        buffers = [name for name, _ in module.named_buffers()]
        if buffers:
            raise ValueError(
                f"has buffers ({', '.join(buffers[:3])}); an ensemble of functions of θ needs a "
                "module without them (no BatchNorm: use GroupNorm, LayerNorm or none)"
            )
        shapes = {name: p.shape for name, p in module.named_parameters()}
        if not shapes:
            raise ValueError("has no parameters to train")
        object.__setattr__(self, "_template", copy.deepcopy(module).to("meta"))
        object.__setattr__(self, "_shapes", shapes)

    def _build(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = self.factory()
        if not isinstance(module, nn.Module):
            raise ValueError(f"factory returned {type(module).__name__}, not a torch.nn.Module")
        return module

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for shape in self._shapes.values())

    @property
    def hidden(self) -> tuple[int, ...]:
        """Units per sample of each leaf module's output (memory estimates, as the MLP's widths).

        Measured by a forward pass of one sample on the meta device (no computation).
        """
        sizes: list[int] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
            for m in self._template.modules()
            if not list(m.children())
        ]
        try:
            self._template(torch.zeros(1, *self.input_shape, device="meta"))
        finally:
            for hook in hooks:
                hook.remove()
        return tuple(sizes[:-1])

    def parameters(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views ``(*lead, *shape)`` of each named parameter in ``theta (*lead, n)``."""
        lead, offset, params = theta.shape[:-1], 0, {}
        for name, shape in self._shapes.items():
            size = math.prod(shape)
            params[name] = theta[..., offset : offset + size].view(*lead, *shape)
            offset += size
        return params

    def unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W, b)`` views per parameter of ``theta (n,)``, in the MLP's layout for the
        per-neuron code (filter normalisation): a weight (≥ 2 dims, output units first, as
        torch stores them) as ``(fan_in, fan_out)`` with an empty b; a 1-D parameter (a bias)
        as b with an empty W."""
        pairs = []
        for p in self.parameters(theta).values():
            empty = p.new_empty(0)
            if p.dim() >= 2:
                pairs.append((p.reshape(p.shape[0], -1).T, empty))
            else:
                pairs.append((empty.view(0, p.numel()), p))
        return pairs

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(member, sample, out)`` for ``theta (member, n)``; ``x`` shared
        ``(sample, features)`` or per member ``(member, sample, features)``."""

        def one(params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            images = inputs.reshape(inputs.shape[0], *self.input_shape)
            return torch.func.functional_call(self._template, params, (images,))

        params = self.parameters(theta)
        if self.ensemble == "loop":
            members = range(theta.shape[0])
            rows = [
                ({k: p[m] for k, p in params.items()}, x if x.dim() == 2 else x[m]) for m in members
            ]
            return torch.stack([one(row, inputs) for row, inputs in rows])
        in_x = None if x.dim() == 2 else 0
        return torch.func.vmap(one, in_dims=(0, in_x))(params, x)

    def init(
        self,
        seeds: Sequence[int],
        scheme: str = "standard",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Initial parameters ``(len(seeds), n_params)``: member m is the module ``factory()``
        builds after ``torch.manual_seed(seeds[m])`` (its own initialisation, in float32 unless
        the factory says otherwise, then cast to ``dtype``).

        ``scheme`` is the MLP's option; a module's initialisation is its own (``standard``)."""
        if scheme != "standard":
            raise ValueError(f"init {scheme!r} is the MLP's; a module initialises itself")
        params, _ = torch.func.stack_module_state([self._build(s) for s in seeds])
        flat = [params[name].detach().flatten(1).to(torch.float64) for name in self._shapes]
        return torch.cat(flat, dim=1).to(dtype=dtype, device=device)
