"""Visual elements: clusters of a label's most typical patches, ranked by median typicality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcmodels.clustering.estimators import KMeans

__all__ = ["Elements", "mine_elements"]


@dataclass(frozen=True)
class Elements:
    assignment: np.ndarray  # (P,) element of each patch; element ids are ranks (0 = most typical)
    score: np.ndarray  # (E,) median typicality of each element's patches
    size: np.ndarray  # (E,) patches per element
    distance: np.ndarray  # (P,) distance of each patch to its element's centre


def mine_elements(features: np.ndarray, typicality: np.ndarray, n_elements: int, *, seed: int) -> Elements:
    """Cluster patch features (P, F) into at most `n_elements` elements with k-means on the
    L2-normalised features, then rank elements by the median typicality (P,) of their patches.
    Element ids are renumbered so that element 0 is the most typical one."""
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
    return Elements(assignment=rank_of[raw], score=medians[order], size=sizes[order], distance=dist)
