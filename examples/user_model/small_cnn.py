"""A user's own model for dlf-study, named in a config as ``small_cnn:build``.

Any importable callable ``build(input_shape, n_classes, **options) -> torch.nn.Module`` works;
dlf-study trains one module per seed as an ensemble (``configs/user_model.yaml``).
"""

from torch import nn


def build(input_shape: tuple[int, ...], n_classes: int, channels: int = 8) -> nn.Module:
    """Two 3×3 convolutions with GroupNorm (no BatchNorm: a module must hold no buffers)."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 3, padding=1),
        nn.GroupNorm(2, channels),
        nn.Tanh(),
        nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, n_classes),
    )
