"""A small folder in CIFAR-10's python-pickle batch format, written for the tests (nothing is
downloaded): the same file names, dict keys, dtypes and pickle protocol as the real batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from dlf.numerics.data import CIFAR_TEST, CIFAR_TRAIN


def write_cifar(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """Five training batches and a test batch of ``per_batch`` 32×32 RGB images each; labels
    cycle through 0..9 and each class has its own mean colour (so a CNN can learn them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = rng.uniform(40, 215, size=(10, 3))
    for i, name in enumerate((*CIFAR_TRAIN, CIFAR_TEST)):
        labels = [(i + j) % 10 for j in range(per_batch)]
        pixels = colour[labels][:, :, None] + rng.normal(0, 30, size=(per_batch, 3, 1024))
        batch = {
            b"batch_label": f"batch {i + 1} of 6".encode(),
            b"labels": labels,
            b"data": np.clip(pixels, 0, 255).astype(np.uint8).reshape(per_batch, 3072),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        with (folder / name).open("wb") as file:
            pickle.dump(batch, file, protocol=2)  # the real batches are protocol-2 pickles
    return folder
