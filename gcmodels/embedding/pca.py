"""Image embeddings for the collection summary: PCA of standardised pixel thumbnails.

`PixelPCAEncoder` follows the scikit-learn transformer contract (``__init__`` only stores
parameters; ``fit`` validates and sets attributes ending in ``_``). An image x (H, W, 3) is
embedded as

    z = W^T ((t(x) - mu) / sigma)                                            (1)

where t(x) is the (size, size) area-averaged thumbnail scaled to [0, 1] and flattened
(3 * size * size,), mu and sigma are the per-feature mean and standard deviation on the
training images, and W (3 * size * size, dim) holds the leading principal axes.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted

__all__ = ["PixelPCAEncoder"]

# Images resized per torch call: bounds the float32 copy to _BATCH x H x W x 3.
_BATCH = 256
# Above this many features an exact PCA (d x d covariance or full SVD) is too costly; the
# randomized solver is used instead, with a fixed seed so that the encoder stays deterministic.
_EXACT_MAX_FEATURES = 4096


def _check_images(images: Any, owner: str, min_images: int) -> np.ndarray:
    """Validate a uint8 batch of RGB images. -> (n, H, W, 3) uint8 array."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{owner}: images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{owner}: images must have shape (n, H, W, 3), got {images.shape}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{owner}: images must have at least one pixel, got shape {images.shape}")
    if images.shape[0] < min_images:
        raise ValueError(f"{owner}: needs at least {min_images} image(s), got {images.shape[0]}")
    return images


def _thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged thumbnails t(x) of (1), flattened channel-first.

    images: (n, H, W, 3) uint8 -> (n, 3 * size * size) float32 in [0, 1].
    """
    n = images.shape[0]
    out = np.empty((n, 3 * size * size), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n, _BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + _BATCH]))  # (m, H, W, 3)
            x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (m, 3, H, W)
            x = F.interpolate(x, size=(size, size), mode="area")  # (m, 3, size, size)
            out[start : start + x.shape[0]] = x.reshape(x.shape[0], -1).numpy()
    return out


class PixelPCAEncoder(TransformerMixin, BaseEstimator):
    """PCA of standardised pixel thumbnails, eq. (1).

    Parameters
    ----------
    n_components : requested embedding dimension; clipped to min(n_components, n_images,
        3 * size * size) when fitted.
    size : thumbnail side in pixels.

    Attributes
    ----------
    n_components_ : int, the embedding dimension actually used (dim).
    mean_ : (3 * size * size,) float64 per-feature mean mu.
    scale_ : (3 * size * size,) float64 per-feature standard deviation sigma (1 where constant).
    pca_ : the fitted ``sklearn.decomposition.PCA``.
    explained_variance_ratio_ : (n_components_,) share of the standardised variance per axis
        (zeros when the training images are all identical).
    """

    fits_on_collection = True  # mean, scale and axes come from the images

    def __init__(self, n_components: int = 32, size: int = 16) -> None:
        self.n_components = n_components
        self.size = size

    def _check_params(self) -> None:
        name = type(self).__name__
        for param in ("n_components", "size"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {param} must be a positive integer, got {value!r}")

    def _standardised(self, images: np.ndarray) -> np.ndarray:
        """(t(x) - mu) / sigma. images: (n, H, W, 3) uint8 -> (n, 3 * size * size) float64."""
        Z = _thumbnails(images, int(self.size)).astype(np.float64)
        Z -= self.mean_
        Z /= self.scale_
        return Z

    def fit(self, images: Any, y: Any = None) -> PixelPCAEncoder:
        """Fit mu, sigma and the principal axes on images (n, H, W, 3) uint8, n >= 2. Returns self."""
        self._check_params()
        images = _check_images(images, type(self).__name__, min_images=2)
        T = _thumbnails(images, int(self.size)).astype(np.float64)  # (n, d)
        n, d = T.shape
        std = T.std(axis=0)
        self.mean_ = T.mean(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        T -= self.mean_
        T /= self.scale_

        k = min(int(self.n_components), n, d)
        if d > _EXACT_MAX_FEATURES and k < 0.8 * min(n, d):
            pca = PCA(n_components=k, svd_solver="randomized", random_state=0)
        else:
            pca = PCA(n_components=k, svd_solver="covariance_eigh" if n >= d else "full")
        with np.errstate(divide="ignore", invalid="ignore"):  # all-identical images: 0 / 0 ratios
            pca.fit(T)
        ratio = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
        self.pca_ = pca
        self.n_components_ = k
        self.explained_variance_ratio_ = np.where(np.isfinite(ratio), ratio, 0.0)
        return self

    def transform(self, images: Any) -> np.ndarray:
        """Embed images (m, H, W, 3) uint8 by eq. (1) -> (m, n_components_) float32."""
        check_is_fitted(self)
        images = _check_images(images, type(self).__name__, min_images=1)
        return self.pca_.transform(self._standardised(images)).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """Metadata of the fitted encoder: {"encoder": "pixel-pca", "size": int, "dim": int}."""
        check_is_fitted(self)
        return {"encoder": "pixel-pca", "size": int(self.size), "dim": int(self.n_components_)}
