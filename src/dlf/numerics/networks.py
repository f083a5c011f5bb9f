"""Built-in ``torch.nn.Module`` architectures, trained as ensembles by ``ModuleModel``.

A registered model is a factory ``build(input_shape, n_classes, **options) -> nn.Module`` with a
pydantic model of its options (``model.options`` in the config).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class Myrtle5Options(BaseModel):
    """Options of ``myrtle5``."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(16, ge=1, description="c: the stages have c, 2c and 4c channels")


def myrtle5(input_shape: tuple[int, ...], n_classes: int, *, channels: int = 16) -> nn.Module:
    """A Myrtle5-style CNN without batch normalisation (the 2021 supplementary's network):
    conv(c) → [conv + 2×2 average pool] × 3 stages of c, 2c, 4c channels → global average pool
    → linear; 3×3 convolutions with padding 1, ReLU after every convolution.

    Average pooling (as the Myrtle kernels of Shankar et al. 2020) keeps the loss twice
    differentiable almost everywhere, as the curvature analyzers assume.
    """
    if len(input_shape) != 3:
        raise ValueError(f"needs images (channels, height, width), got inputs {input_shape}")
    widths = [channels, 2 * channels, 4 * channels]
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.ReLU()]
    previous = channels
    for width in widths:
        layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, n_classes)]
    return nn.Sequential(*layers)
