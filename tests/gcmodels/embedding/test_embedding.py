"""Tests of gcmodels.embedding.pca: PixelPCAEncoder (CPU, tiny images)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from gcmodels.embedding.pca import PixelPCAEncoder, _thumbnails


def _images(n: int, h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_shape_dtype_and_metadata():
    images = _images(20)
    enc = PixelPCAEncoder(n_components=5, size=4).fit(images)
    z = enc.transform(images)
    assert z.shape == (20, 5) and z.dtype == np.float32
    assert enc.n_components_ == 5
    assert enc.explained_variance_ratio_.shape == (5,)
    assert np.all(np.diff(enc.explained_variance_ratio_) <= 1e-12)  # sorted, largest first
    assert 0 < enc.explained_variance_ratio_.sum() <= 1 + 1e-9
    assert enc.describe() == {"encoder": "pixel-pca", "size": 4, "dim": 5}
    # other image sizes are resized to the same thumbnail
    assert enc.transform(_images(3, h=7, w=9, seed=1)).shape == (3, 5)


def test_deterministic():
    images = _images(15)
    a = PixelPCAEncoder(n_components=4, size=4).fit_transform(images)
    b = PixelPCAEncoder(n_components=4, size=4).fit_transform(images.copy())
    np.testing.assert_array_equal(a, b)


def test_transform_of_training_set_equals_fit_transform():
    images = _images(12)
    enc = PixelPCAEncoder(n_components=6, size=4)
    np.testing.assert_array_equal(clone(enc).fit(images).transform(images), enc.fit_transform(images))


@pytest.mark.parametrize(
    ("n_images", "size", "requested", "expected"),
    [(5, 4, 32, 5), (40, 2, 32, 12), (40, 4, 7, 7)],  # clipped by n, by 3 * size^2, not clipped
)
def test_n_components_is_clipped(n_images, size, requested, expected):
    enc = PixelPCAEncoder(n_components=requested, size=size).fit(_images(n_images))
    assert enc.n_components_ == expected
    assert enc.transform(_images(2, seed=3)).shape == (2, expected)
    assert enc.describe()["dim"] == expected
    assert enc.n_components == requested  # the parameter itself is untouched


def test_embedding_is_the_pca_of_standardised_thumbnails():
    images = _images(30)
    enc = PixelPCAEncoder(n_components=3, size=4).fit(images)
    T = _thumbnails(images, 4).astype(np.float64)
    Z = (T - T.mean(axis=0)) / T.std(axis=0)
    # principal axes from the SVD of the standardised data, up to sign
    _, _, Vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
    expected = Z @ Vt[:3].T
    got = enc.transform(images).astype(np.float64)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), rtol=1e-4, atol=1e-4)


def test_area_resize_is_block_averaging():
    images = _images(3, h=8, w=8)
    t = _thumbnails(images, 4)  # (3, 3 * 4 * 4), channel-first
    blocks = images.astype(np.float64).reshape(3, 4, 2, 4, 2, 3).mean(axis=(2, 4)) / 255.0  # (3, 4, 4, 3)
    np.testing.assert_allclose(t, blocks.transpose(0, 3, 1, 2).reshape(3, -1), atol=1e-6)
    assert t.dtype == np.float32 and t.min() >= 0 and t.max() <= 1


def test_identical_images_do_not_produce_nan():
    images = np.full((4, 6, 6, 3), 128, dtype=np.uint8)
    enc = PixelPCAEncoder(n_components=3, size=2).fit(images)
    z = enc.transform(images)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(enc.explained_variance_ratio_))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="uint8, got dtype float64"):
        PixelPCAEncoder().fit(np.zeros((3, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\), got \(3, 4, 4\)"):
        PixelPCAEncoder().fit(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="at least 2 image"):
        PixelPCAEncoder().fit(_images(1))
    with pytest.raises(ValueError, match="size must be a positive integer, got 0"):
        PixelPCAEncoder(size=0).fit(_images(3))
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        PixelPCAEncoder(n_components=2.5).fit(_images(3))
    with pytest.raises(NotFittedError):
        PixelPCAEncoder().transform(_images(2))
    with pytest.raises(NotFittedError):
        PixelPCAEncoder().describe()


def test_init_only_stores_parameters():
    enc = PixelPCAEncoder(n_components=-3, size=0)  # validated in fit, not here
    assert enc.get_params() == {"n_components": -3, "size": 0}
