"""How close samples of a model are to the real images, on image features: the Frechet distance
between the Gaussians fitted to the two feature sets, and which real image each sample is
nearest to.

The Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))     (Dowson & Landau 1982)

On Inception-v3 pool features it is the FID (Heusel et al. 2017); on any other features it is
"the Frechet distance on <those> features", never an FID: the numbers do not compare with
published FIDs. tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues
of the symmetric positive semi-definite S1^(1/2) S2 S1^(1/2) (similar to S1 S2), which needs no
complex matrix square root and gives the same value as scipy.linalg.sqrtm(S1 @ S2).trace().

With few samples the estimate is biased upwards (the sample covariances are noisy, and singular
when there are fewer samples than dimensions): compare distances measured with the same numbers
of samples and real images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from gcmodels.labels import split_labels

__all__ = [
    "ALL",
    "FID_FEATURES",
    "INCEPTION_DIM",
    "frechet_distance",
    "frechet_distance_between",
    "gaussian_stats",
    "inception_features",
    "nearest_neighbours",
    "sample_quality",
]

ALL = "(all)"  # the row of `sample_quality` over every label
INCEPTION_DIM = 2048  # pool features of the FID Inception-v3
FID_FEATURES = "Inception-v3 pool (FID)"  # the name of its features, where a Frechet distance is the FID


def inception_features(
    network: Callable[..., Any], images: np.ndarray, batch_size: int = 64, device: str | None = None
) -> np.ndarray:
    """The FID's features of uint8 RGB images (N, H, W, 3): (N, 2048) float64 pool features of the
    Inception-v3 `network`, the FID reference network as the StyleGAN2-ADA / EDM metrics call it:
    ``network(x, return_features=True)`` on a uint8 (B, 3, H, W) batch, which it resizes to 299 x 299
    and normalises itself (NVIDIA's ``inception-2015-12-05.pt`` TorchScript). `device`: where the
    batches go (the network's own)."""
    import torch

    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"inception features need uint8 RGB images (N, H, W, 3), got {x.dtype} {x.shape}")
    parts = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size].transpose(0, 3, 1, 2)))
            out = network(batch.to(device) if device else batch, return_features=True)
            parts.append(out.detach().float().cpu().numpy().reshape(len(batch), -1))
    feats = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, INCEPTION_DIM))
    if feats.shape[1] != INCEPTION_DIM:
        raise ValueError(f"the Inception network gave {feats.shape[1]} features per image, not {INCEPTION_DIM}")
    return feats


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D) features with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, N - 1) of features (N, D), N >= 2, float64."""
    x = _features(features, "features")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring): mu (D,), sigma
    (D, D) symmetric positive semi-definite. Returns a float >= 0 (tiny negative rounding is
    clipped to 0)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"means (D,) and covariances (D, D) of one D needed, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    r = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((r @ s2 @ r + (r @ s2 @ r).T) / 2), 0.0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(value, 0.0)


def frechet_distance_between(a: np.ndarray, b: np.ndarray) -> float:
    """`frechet_distance` of the Gaussians fitted to features a (N, D) and b (M, D)."""
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features of different dimensions: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def nearest_neighbours(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query (Q, D), the index (Q,) of its nearest reference (R, D) in Euclidean
    distance (ties: the lowest index) and that distance (Q,)."""
    q = np.asarray(queries, np.float64)
    r = np.asarray(references, np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or len(r) == 0:
        raise ValueError(f"queries (Q, D) and references (R >= 1, D) of one D needed, got {q.shape} and {r.shape}")
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ r.T + (r * r).sum(1)[None, :]
    idx = np.argmin(d2, axis=1)
    return idx, np.sqrt(np.clip(d2[np.arange(len(q)), idx], 0.0, None))


def sample_quality(
    sample_labels: np.ndarray,
    sample_features: np.ndarray,
    real_labels: np.ndarray,
    real_features: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """How close samples (sample_labels (M,), sample_features (M, D)) are to the real images
    (real_labels (N,), real_features (N, D)): per label (in order of first appearance among the
    samples) and over all (`(all)`), the
    number of samples and real images, the Frechet distance between their features (NaN when
    either side has fewer than 2), and the share of samples whose nearest real image (Euclidean,
    over every real image) has the sample's label. A real image of several labels (``"a|b"``,
    `gcmodels.labels`) counts as a real image of each, and carries each. Also returns, per sample,
    the index of its nearest real image and the distance to it."""
    nearest, distance = nearest_neighbours(sample_features, real_features)
    carried = [frozenset(split_labels(v)) if isinstance(v, str) else frozenset() for v in real_labels]
    hit = np.array([lab in carried[j] for lab, j in zip(sample_labels.tolist(), nearest)], bool)
    rows = []
    for label in [*dict.fromkeys(sample_labels.tolist()), ALL]:
        s = np.ones(len(sample_labels), bool) if label == ALL else sample_labels == label
        r = np.ones(len(real_labels), bool) if label == ALL else np.array([label in c for c in carried], bool)
        fd = (
            frechet_distance_between(real_features[r], sample_features[s])
            if s.sum() >= 2 and r.sum() >= 2
            else float("nan")
        )
        rows.append(
            {
                "label": label,
                "samples": int(s.sum()),
                "real_images": int(r.sum()),
                "frechet": fd,
                "nearest_label_share": float(hit[s].mean()),
            }
        )
    return pd.DataFrame(rows), nearest, distance
