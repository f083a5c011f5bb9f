"""Data sets: the authors' spiral and scikit-learn's bundled 8×8 digits.

A data set factory takes its validated options and returns a :class:`Dataset` of NumPy arrays;
the trainer moves them to the run's device and dtype. Plugins add more through ``dlf_register``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Dataset:
    """Training and validation arrays; labels are integers in ``[0, n_classes)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


class SpiralOptions(BaseModel):
    """Options of the ``spiral`` data set (the 2021/2024 papers' "Swiss roll")."""

    model_config = ConfigDict(extra="forbid")
    classes: int = Field(3, ge=2, description="number of arms C")
    points_per_class: int = Field(100, ge=2, description="points per arm N")
    noise: float = Field(0.2, ge=0, description="std of the Gaussian noise on the angle")
    turns: float = Field(2.0, gt=0, description="turns of each arm (the notebooks: 2, i.e. 4π)")
    seed: int = Field(0, description="seed of the training set")
    val_seed: int = Field(1, description="seed of the validation set (same generator)")


def spiral_points(
    classes: int, points_per_class: int, noise: float, turns: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' generator: arm j has r = linspace(0, 1, N) and angle
    linspace(ωj, ωj + 2π·turns, N) + noise·randn(N), ω = 2π/C; labels ordered by class."""
    rng = np.random.default_rng(seed)
    omega = 2 * np.pi / classes
    xs, ys = [], []
    for arm in range(classes):
        r = np.linspace(0.0, 1.0, points_per_class)
        t = np.linspace(omega * arm, omega * arm + 2 * np.pi * turns, points_per_class)
        t = t + noise * rng.standard_normal(points_per_class)
        xs.append(np.stack([r * np.cos(t), r * np.sin(t)], axis=1))
        ys.append(np.full(points_per_class, arm))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def spiral(options: SpiralOptions) -> Dataset:
    args = (options.classes, options.points_per_class, options.noise, options.turns)
    x_train, y_train = spiral_points(*args, seed=options.seed)
    x_val, y_val = spiral_points(*args, seed=options.val_seed)
    return Dataset("spiral", x_train, y_train, x_val, y_val, options.classes)


class DigitsOptions(BaseModel):
    """Options of the ``digits`` data set (scikit-learn's bundled 8×8 digits, 10 classes)."""

    model_config = ConfigDict(extra="forbid")
    val_fraction: float = Field(0.3, gt=0, lt=1, description="share held out for validation")
    split_seed: int = Field(0, description="seed of the stratified train/validation split")


def digits(options: DigitsOptions) -> Dataset:
    """Standardised with the training split's mean and std (features with zero std are left 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=options.val_fraction, random_state=options.split_seed, stratify=y
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return Dataset(
        "digits",
        (x_train - mean) / std,
        y_train.astype(np.int64),
        (x_val - mean) / std,
        y_val.astype(np.int64),
        10,
    )
