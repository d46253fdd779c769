"""Visual elements: clusters of a label's most typical patches, ranked by median typicality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcmodels.clustering.estimators import KMeans

__all__ = ["Elements", "median_interval", "mine_elements"]


@dataclass(frozen=True)
class Elements:
    assignment: np.ndarray  # (P,) element of each patch; element ids are ranks (0 = most typical)
    score: np.ndarray  # (E,) median typicality of each element's patches
    size: np.ndarray  # (E,) patches per element
    distance: np.ndarray  # (P,) distance of each patch to its element's centre
    score_lo: np.ndarray  # (E,) distribution-free 95 % interval of the median (`median_interval`)
    score_hi: np.ndarray  # (E,)


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval of the median of `values`: order statistics
    x_(j) <= median <= x_(n+1-j) (1-based) with the largest j whose two-sided binomial tail
    2 P(B < j), B ~ Bin(n, 1/2), is at most 1 - `level`. Returns (low, high, coverage achieved);
    with too few values for `level` (n <= 5 at 95 %) the whole range, with its smaller coverage
    1 - 2^(1 - n)."""
    from scipy.stats import binom

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    alpha = 1.0 - level
    tails = binom.cdf(np.arange(n), n, 0.5)  # tails[j - 1] = P(B <= j - 1) = P(B < j)
    ok = np.nonzero(2 * tails <= alpha)[0]
    j = int(ok[-1]) + 1 if len(ok) else 1
    j = min(j, (n + 1) // 2)
    return float(x[j - 1]), float(x[n - j]), float(1.0 - 2 * tails[j - 1])


def mine_elements(features: np.ndarray, typicality: np.ndarray, n_elements: int, *, seed: int) -> Elements:
    """Cluster patch features (P, F) into at most `n_elements` elements with k-means on the
    L2-normalised features, then rank elements by the median typicality (P,) of their patches.
    Element ids are renumbered so that element 0 is the most typical one. Each element's score
    comes with a 95 % interval of the median over its patches (`median_interval`): how surely it
    is as typical as it looks, given how its patches vary."""
    features = np.asarray(features, dtype=np.float64)
    typicality = np.asarray(typicality, dtype=np.float64)
    p = features.shape[0]
    if p == 0:
        raise ValueError("no patches to cluster into elements")
    if typicality.shape != (p,):
        raise ValueError(f"typicality must be ({p},), got {typicality.shape}")
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norm, 1e-12)
    k = min(n_elements, p, len(np.unique(unit.round(8), axis=0)))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(unit)
    raw = km.labels_
    dist = km.transform(unit)[np.arange(p), raw]
    medians = np.array([np.median(typicality[raw == c]) for c in range(k)])
    sizes = np.bincount(raw, minlength=k)
    order = np.lexsort((-sizes, -medians))  # by median desc, then larger first
    rank_of = np.empty(k, dtype=np.int64)
    rank_of[order] = np.arange(k)
    bounds = np.array([median_interval(typicality[raw == c])[:2] for c in order]).reshape(k, 2)
    return Elements(
        assignment=rank_of[raw],
        score=medians[order],
        size=sizes[order],
        distance=dist,
        score_lo=bounds[:, 0],
        score_hi=bounds[:, 1],
    )
