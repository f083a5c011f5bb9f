"""Data sets: the spiral generator's documented facts, the bundled digits, CIFAR-10 batches."""

import numpy as np
import pytest

from dlf.numerics.data import DigitsOptions, SpiralOptions, digits, spiral, spiral_points


def test_spiral_matches_the_authors_generator():
    x, y = spiral_points(classes=3, points_per_class=100, noise=0.0, turns=2.0, seed=0)
    assert x.shape == (300, 2) and list(np.bincount(y)) == [100, 100, 100]
    assert (np.diff(y) >= 0).all()  # labels ordered by class
    r = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(r[:100], np.linspace(0, 1, 100), atol=1e-12)
    # without noise, arm j's angle is linspace(ωj, ωj + 4π): last point of arm 1 at 2π/3 + 4π
    angle = np.arctan2(x[199, 1], x[199, 0])
    np.testing.assert_allclose(np.mod(angle, 2 * np.pi), 2 * np.pi / 3, atol=1e-12)


def test_spiral_noise_is_on_the_angle_only_and_validation_differs():
    ds = spiral(SpiralOptions())
    np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1)[:100], np.linspace(0, 1, 100))
    assert not np.allclose(ds.x_train, ds.x_val)
    np.testing.assert_array_equal(ds.y_train, ds.y_val)
    again = spiral(SpiralOptions())
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_digits_standardised_fixed_split():
    ds = digits(DigitsOptions())
    assert ds.n_classes == 10 and ds.n_features == 64
    assert len(ds.y_train) + len(ds.y_val) == 1797
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_array_equal(ds.y_val, digits(DigitsOptions()).y_val)


def cifar_options(path, **options):
    from dlf.numerics.data import Cifar10Options

    return Cifar10Options(path=path, **options)


def test_cifar_folder_in_the_real_format_is_read_back(tmp_path):
    import pickle

    from dlf.numerics.data import cifar10
    from tests.cifar_fixtures import write_cifar

    folder = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=30)
    raw = {}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        with (folder / name).open("rb") as file:
            raw[name] = pickle.load(file, encoding="bytes")  # as CIFAR's own loader reads it
    pixels = np.concatenate([b[b"data"] for b in raw.values()]).astype(np.float64) / 255
    labels = np.concatenate([b[b"labels"] for b in raw.values()])
    ds = cifar10(cifar_options(folder, classes=[7, 2], normalize=False))
    keep = np.isin(labels, [7, 2])
    np.testing.assert_array_equal(ds.x_train, pixels[keep])  # file order when not subsampled
    np.testing.assert_array_equal(ds.y_train, np.where(labels[keep] == 7, 0, 1))
    assert ds.input_shape == (3, 32, 32) and ds.n_classes == 2 and len(ds.y_val) == 6

    sub = cifar10(cifar_options(folder, classes=3, train_size=40, val_size=5, seed=4))
    assert len(sub.y_train) == 40 and len(sub.y_val) == 5 and set(sub.y_train) <= {0, 1, 2}
    channels = sub.x_train.reshape(40, 3, 1024)
    np.testing.assert_allclose(channels.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(channels.std(axis=(0, 2)), 1, atol=1e-12)
    again = cifar10(cifar_options(folder, classes=3, train_size=40, val_size=5, seed=4))
    np.testing.assert_array_equal(sub.x_train, again.x_train)


@pytest.mark.parametrize("problem", ["missing", "no_batches", "too_many", "not_a_batch"])
def test_cifar_problems_are_one_line_errors_naming_the_field(tmp_path, problem):
    import pickle

    from dlf.errors import ConfigError
    from dlf.numerics.data import cifar10
    from tests.cifar_fixtures import write_cifar

    folder, options, field = tmp_path / "cifar", {}, "data.path"
    if problem == "no_batches":
        folder.mkdir()
    elif problem == "too_many":
        write_cifar(folder)
        options, field = {"classes": 2, "train_size": 1000}, "data.train_size"
    elif problem == "not_a_batch":
        write_cifar(folder)
        with (folder / "data_batch_3").open("wb") as file:
            pickle.dump({b"data": print}, file, protocol=2)  # names a global: refused unread
    with pytest.raises(ConfigError) as caught:
        cifar10(cifar_options(folder, **options))
    assert caught.value.field == field and "\n" not in str(caught.value)
