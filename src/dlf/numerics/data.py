"""Data sets: the authors' spiral, scikit-learn's bundled 8×8 digits, CIFAR-10 from a folder.

A data set factory takes its validated options and returns a :class:`Dataset` of NumPy arrays;
the trainer moves them to the run's device and dtype. Plugins add more through ``dlf_register``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dlf.config import Seed
from dlf.errors import ConfigError, first_line


@dataclass(frozen=True)
class Dataset:
    """Training and validation arrays, one flat row per sample; labels are integers in
    ``[0, n_classes)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    shape: tuple[int, ...] | None = None  # one sample's shape (3, 32, 32); None: flat features

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape as a model sees it; the arrays hold samples flattened."""
        return self.shape or (self.n_features,)


class SpiralOptions(BaseModel):
    """Options of the ``spiral`` data set (the 2021/2024 papers' "Swiss roll")."""

    model_config = ConfigDict(extra="forbid")
    classes: int = Field(3, ge=2, description="number of arms C")
    points_per_class: int = Field(100, ge=2, description="points per arm N")
    noise: float = Field(0.2, ge=0, description="std of the Gaussian noise on the angle")
    turns: float = Field(2.0, gt=0, description="turns of each arm (the notebooks: 2, i.e. 4π)")
    seed: Seed = Field(0, description="seed of the training set")
    val_seed: Seed = Field(1, description="seed of the validation set (same generator)")
    draw: Literal["default_rng", "authors"] = Field(
        "default_rng",
        description="random stream of the noise: numpy's default_rng(seed), or the authors' "
        "legacy RandomState(seed).randn (the papers' point sets)",
    )

    @model_validator(mode="after")
    def _legacy_seeds(self) -> SpiralOptions:
        """The authors' RandomState takes seeds below 2**32 only."""
        if self.draw == "authors" and max(self.seed, self.val_seed) >= 2**32:
            raise ValueError("draw 'authors' (numpy's RandomState) takes seeds < 2**32")
        return self


def spiral_points(
    classes: int,
    points_per_class: int,
    noise: float,
    turns: float,
    seed: int,
    draw: str = "default_rng",
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' construction: arm j has r = linspace(0, 1, N) and angle
    linspace(ωj, ωj + 2π·turns, N) + noise·randn(N), ω = 2π/C; labels ordered by class.

    ``draw`` picks the random stream: ``"authors"`` is the notebooks' legacy
    ``RandomState(seed)`` with ``randn`` drawn arm after arm, so seeds give the papers' point
    sets; ``"default_rng"`` numpy's ``default_rng(seed)`` (other point sets, same law)."""
    normal: Callable[[int], np.ndarray]
    if draw == "authors":
        normal = np.random.RandomState(seed).randn
    elif draw == "default_rng":
        normal = np.random.default_rng(seed).standard_normal
    else:
        raise ValueError(f"unknown draw {draw!r}; allowed: default_rng, authors")
    omega = 2 * np.pi / classes
    xs, ys = [], []
    for arm in range(classes):
        r = np.linspace(0.0, 1.0, points_per_class)
        t = np.linspace(omega * arm, omega * arm + 2 * np.pi * turns, points_per_class)
        t = t + noise * normal(points_per_class)
        xs.append(np.stack([r * np.cos(t), r * np.sin(t)], axis=1))
        ys.append(np.full(points_per_class, arm))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def spiral(options: SpiralOptions) -> Dataset:
    args = (options.classes, options.points_per_class, options.noise, options.turns)
    x_train, y_train = spiral_points(*args, seed=options.seed, draw=options.draw)
    x_val, y_val = spiral_points(*args, seed=options.val_seed, draw=options.draw)
    return Dataset("spiral", x_train, y_train, x_val, y_val, options.classes)


class DigitsOptions(BaseModel):
    """Options of the ``digits`` data set (scikit-learn's bundled 8×8 digits, 10 classes)."""

    model_config = ConfigDict(extra="forbid")
    val_fraction: float = Field(0.3, gt=0, lt=1, description="share held out for validation")
    split_seed: int = Field(
        0, ge=0, lt=2**32, description="seed of the stratified train/validation split"
    )


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
        (1, 8, 8),
    )


CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_SHAPE = (3, 32, 32)


class Cifar10Options(BaseModel):
    """Options of the ``cifar10`` data set (the python-pickle batches, read from ``path``)."""

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="folder holding data_batch_1..5 and test_batch")
    classes: list[int] = Field(
        default_factory=lambda: list(range(10)),
        description="the CIFAR labels kept, relabelled 0..k-1 in this order; an int k: the first k",
    )
    train_size: int | None = Field(None, ge=1, description="random training subset (null: all)")
    val_size: int | None = Field(None, ge=1, description="random subset of test_batch (null: all)")
    seed: Seed = Field(0, description="seed of both subsets")
    normalize: bool = Field(True, description="per-channel mean/std of the training subset")

    @field_validator("classes", mode="before")
    @classmethod
    def _first_k(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return list(range(value))
        return value

    @field_validator("classes")
    @classmethod
    def _labels(cls, value: list[int]) -> list[int]:
        if len(value) < 2 or len(set(value)) != len(value) or not set(value) <= set(range(10)):
            raise ValueError("give at least two distinct CIFAR-10 labels in 0..9")
        return value


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: a pickle can run any code it names, so only
    the builtins and NumPy array reconstruction that the batches use are allowed."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 3
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "list"),
        ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3072)`` uint8 (channel-major, 32×32 each) and labels ``(N,)`` of one batch
    file; a missing or malformed file is a ConfigError naming ``data.path``."""
    try:
        with path.open("rb") as file:
            batch = _BatchUnpickler(file, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3072)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise ConfigError(
            "data.path",
            f"{path} not found: the folder must hold CIFAR-10's python batches "
            f"({', '.join(CIFAR_TRAIN)}, {CIFAR_TEST})",
        ) from None
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        why = first_line(exc)
        raise ConfigError("data.path", f"{path} is not a CIFAR-10 python batch ({why})") from None
    if len(labels) != len(data):
        raise ConfigError("data.path", f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _subset(
    data: np.ndarray,
    labels: np.ndarray,
    classes: list[int],
    size: int | None,
    seed: int,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` of the samples whose label is in ``classes`` (in drawn order), relabelled
    by position in ``classes``; all of them (in file order) if ``size`` is None."""
    keep = np.flatnonzero(np.isin(labels, classes))
    if size is not None:
        if size > len(keep):
            raise ConfigError(
                f"data.{split}_size", f"{size} samples asked; the chosen classes have {len(keep)}"
            )
        keep = np.random.default_rng(seed).permutation(keep)[:size]
    relabel = np.full(10, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return data[keep], relabel[labels[keep]]


def cifar10(options: Cifar10Options) -> Dataset:
    """CIFAR-10 from ``options.path``, never downloaded: the training subset from
    ``data_batch_1..5``, validation from ``test_batch``; pixels scaled to [0, 1] and, with
    ``normalize``, standardised per channel by the training subset's mean and std."""
    if not options.path.is_dir():
        raise ConfigError(
            "data.path",
            f"{options.path} is not a folder (CIFAR-10's python batches, "
            "cifar-10-batches-py, downloaded by hand: nothing is fetched at run time)",
        )
    parts = [read_cifar_batch(options.path / name) for name in CIFAR_TRAIN]
    train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test = read_cifar_batch(options.path / CIFAR_TEST)
    x_train, y_train = _subset(*train, options.classes, options.train_size, options.seed, "train")
    x_val, y_val = _subset(*test, options.classes, options.val_size, options.seed + 1, "val")
    x_train = x_train.reshape(-1, 3, 1024) / 255.0
    x_val = x_val.reshape(-1, 3, 1024) / 255.0
    if options.normalize:
        mean = x_train.mean(axis=(0, 2), keepdims=True)
        std = x_train.std(axis=(0, 2), keepdims=True)
        std[std == 0] = 1.0
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return Dataset(
        "cifar10",
        x_train.reshape(len(x_train), -1),
        y_train,
        x_val.reshape(len(x_val), -1),
        y_val,
        len(options.classes),
        CIFAR_SHAPE,
    )
