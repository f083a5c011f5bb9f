"""The core's own data sets, models, losses and schedules, registered like any plugin's.

The plugin manager loads this module by name first (as pytest loads its default plugins), so a
built-in name and a plugin's name live in the same registries and collide the same way.
"""

from __future__ import annotations

from dlf.hooks.registries import DatasetEntry, DataSizes, ModelEntry, Registries
from dlf.hooks.specs import hookimpl
from dlf.numerics.data import (
    Cifar10Options,
    DigitsOptions,
    SpiralOptions,
    cifar10,
    digits,
    spiral,
)
from dlf.numerics.losses import BUILTIN_LOSSES
from dlf.numerics.models import mlp
from dlf.numerics.networks import Myrtle5Options, myrtle5
from dlf.numerics.schedules import sine, triangle


@hookimpl
def dlf_register(registries: Registries) -> None:
    registries.datasets.add("spiral", DatasetEntry(spiral, SpiralOptions, spiral_sizes))
    registries.datasets.add("digits", DatasetEntry(digits, DigitsOptions))
    registries.datasets.add("cifar10", DatasetEntry(cifar10, Cifar10Options))
    registries.models.add("mlp", ModelEntry(mlp, width="width"))  # model.width, depth, activation
    registries.models.add("myrtle5", ModelEntry(myrtle5, Myrtle5Options, width="channels"))
    for loss in BUILTIN_LOSSES:
        registries.losses.add(loss.name, loss)
    registries.schedules.add("triangle", triangle)
    registries.schedules.add("sine", sine)


def spiral_sizes(options: SpiralOptions) -> DataSizes:
    """The spiral's sizes from its options: C arms of N points, for training and validation;
    the samples are blamed on the larger of the two."""
    c, n = options.classes, options.points_per_class
    samples = "data.classes" if c > n else "data.points_per_class"
    return DataSizes(c * n, c * n, 2, c, samples, "data.classes")
