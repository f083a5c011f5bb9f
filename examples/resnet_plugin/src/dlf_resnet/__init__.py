"""A model plugin for dlf-study: ``model.name: resnet`` is a small ResNet for images.

Registered through the ``dlf`` entry point (see ``pyproject.toml``). A model is a factory
``build(input_shape, n_classes, **options) -> torch.nn.Module`` plus a pydantic model of its
options; dlf-study trains one module per seed as an ensemble with ``torch.func``, so every
analyzer (Lanczos, NTK, bifurcation, landscape) works on it.

Normalisation is GroupNorm: BatchNorm's running statistics are buffers, which a loss that is a
function of the parameters alone cannot have (dlf-study refuses modules with buffers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dlf import plugin


class ResNetOptions(BaseModel):
    """``model.options`` of ``resnet``."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(8, ge=2, description="channels of the first stage (doubled per stage)")
    blocks: int = Field(1, ge=1, description="residual blocks per stage")
    stages: int = Field(2, ge=1, le=4, description="stages; each after the first halves H and W")
    groups: int = Field(2, ge=1, description="GroupNorm groups (must divide every stage's width)")


class Block(nn.Module):
    """conv-norm-ReLU-conv-norm plus the shortcut (a strided 1×1 conv where the shape changes)."""

    def __init__(self, n_in: int, n_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(groups, n_out),
            nn.ReLU(),
            nn.Conv2d(n_out, n_out, 3, padding=1, bias=False),
            nn.GroupNorm(groups, n_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and n_in == n_out
            else nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False)
        )

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)).relu()


def resnet(
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    channels: int = 8,
    blocks: int = 1,
    stages: int = 2,
    groups: int = 2,
) -> nn.Module:
    """stem conv → ``stages`` × ``blocks`` residual blocks → global average pool → linear."""
    if len(input_shape) != 3:
        raise ValueError(f"needs images (channels, height, width), got inputs {input_shape}")
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, channels),
        nn.ReLU(),
    ]
    width = channels
    for stage in range(stages):
        out = channels * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(Block(width, out, stride, groups))
            width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)


@plugin.hookimpl
def dlf_register(registries: plugin.Registries) -> None:
    registries.models.add("resnet", plugin.ModelEntry(resnet, ResNetOptions))
