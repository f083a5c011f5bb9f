"""Data sets: the spiral generator's documented facts and the bundled digits."""

import numpy as np

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
