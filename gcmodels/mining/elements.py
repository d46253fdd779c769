"""Visual elements: clusters of a label's most typical patches, ranked by median typicality.

An element can be typical of its label and yet shared with the other labels (a watermark, a
distractor every label carries: the contrast maps leave it a small positive typicality, and its
patches cluster tightly). `label_specificity` measures that from the features alone: the share of
each patch's nearest patches (over every label's kept patches) that carry its own label, about 1
for what only its label has and about the label's share of the patches (chance) for what every
label has. `mine_elements` flags an element `shared` when its patches' median specificity is
below half-way from chance to 1, and can rank the label-specific elements first
(benchmarks/RESULTS.md 12j).

The clusters are k-means' (the paper's) or Ward's agglomerative clustering of the same unit
features: deterministic, and on the ground-truth sets never a top element merged from two things
where k-means merged one in some of its draws (RESULTS.md 12k)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcmodels.clustering.estimators import Agglomerative, KMeans

__all__ = ["Elements", "element_order", "label_specificity", "median_interval", "mine_elements", "shared_elements"]


@dataclass(frozen=True)
class Elements:
    assignment: np.ndarray  # (P,) element of each patch; element ids are ranks (0 = most typical)
    score: np.ndarray  # (E,) median typicality of each element's patches
    size: np.ndarray  # (E,) patches per element
    distance: np.ndarray  # (P,) distance of each patch to its element's centre
    score_lo: np.ndarray  # (E,) distribution-free 95 % interval of the median (`median_interval`)
    score_hi: np.ndarray  # (E,)
    specificity: np.ndarray  # (E,) median `label_specificity` of the element's patches (NaN: not measured)
    shared: np.ndarray  # (E,) bool: specificity below half-way from chance to 1


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def label_specificity(features: np.ndarray, labels: np.ndarray, neighbours: int = 10, block: int = 2048) -> np.ndarray:
    """The share of each patch's `neighbours` nearest other patches (cosine similarity of the
    features (P, F)) whose label (P,) is its own: about 1 for a patch like no other label's, about
    its label's share of the patches for one every label has. Computed `block` rows at a time
    (memory block x P); only which patches are the nearest counts, not their order (a partial
    sort: 16 labels x 1000 patches in a few seconds on 2 cores)."""
    unit = _unit(features).astype(np.float32)  # a neighbour search: single precision is plenty
    labels = np.asarray(labels)
    p = len(unit)
    if labels.shape != (p,):
        raise ValueError(f"labels must be ({p},), got {labels.shape}")
    k = min(neighbours, p - 1)
    if k < 1:
        return np.ones(p)
    out = np.empty(p)
    for start in range(0, p, block):
        rows = np.arange(start, min(start + block, p))
        sim = unit[rows] @ unit.T
        sim[np.arange(len(rows)), rows] = -np.inf  # not its own neighbour
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[rows] = (labels[nearest] == labels[rows, None]).mean(axis=1)
    return out


def shared_elements(specificity: np.ndarray, chance: float | None) -> np.ndarray:
    """Which elements (their median `label_specificity`, (E,)) are shared with other labels:
    below half-way from the label's `chance` to 1. None or NaN: not measured, not shared."""
    spec = np.asarray(specificity, dtype=np.float64)
    if chance is None:
        return np.zeros(spec.shape, bool)
    return spec < (chance + 1.0) / 2.0  # NaN compares False


def element_order(medians: np.ndarray, sizes: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """The elements in rank order: by median typicality descending, then the larger first; with
    `last` (bool (E,)) those flagged come after all the others."""
    keys = [-np.asarray(sizes), -np.asarray(medians, dtype=np.float64)]
    return np.lexsort((*keys, np.asarray(last, bool)) if last is not None else keys)


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


def mine_elements(
    features: np.ndarray,
    typicality: np.ndarray,
    n_elements: int,
    *,
    seed: int,
    specificity: np.ndarray | None = None,
    chance: float | None = None,
    shared_last: bool = False,
    method: str = "kmeans",
) -> Elements:
    """Cluster patch features (P, F) into at most `n_elements` elements on the L2-normalised
    features, with k-means (`method` "kmeans": `seed`, 4 restarts) or Ward's agglomerative
    clustering ("ward": deterministic), then rank elements by the median typicality (P,) of
    their patches. A patch's `distance` is to its element's centre (the mean of its features).
    Element ids are renumbered so that element 0 is the most typical one. Each element's score
    comes with a 95 % interval of the median over its patches (`median_interval`): how surely it
    is as typical as it looks, given how its patches vary.

    With the patches' `specificity` (P,) (`label_specificity`) and the label's `chance` (its share
    of the patches it was measured over), an element whose median specificity is below
    (chance + 1) / 2 is `shared`; `shared_last` ranks every label-specific element before the
    shared ones (each group by median typicality)."""
    typicality = np.asarray(typicality, dtype=np.float64)
    p = np.asarray(features).shape[0]
    if p == 0:
        raise ValueError("no patches to cluster into elements")
    if typicality.shape != (p,):
        raise ValueError(f"typicality must be ({p},), got {typicality.shape}")
    if specificity is not None and np.shape(specificity) != (p,):
        raise ValueError(f"specificity must be ({p},), got {np.shape(specificity)}")
    unit = _unit(features)
    k = min(n_elements, p, len(np.unique(unit.round(8), axis=0)))
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(unit)
        raw = km.labels_
        dist = km.transform(unit)[np.arange(p), raw]
    elif method == "ward":
        raw = Agglomerative(n_clusters=k, linkage="ward").fit(unit).labels_
        centres = np.stack([unit[raw == c].mean(axis=0) for c in range(k)])
        dist = np.linalg.norm(unit - centres[raw], axis=1)
    else:
        raise ValueError(f"method must be 'kmeans' or 'ward', got {method!r}")
    medians = np.array([np.median(typicality[raw == c]) for c in range(k)])
    sizes = np.bincount(raw, minlength=k)
    if specificity is None:
        spec = np.full(k, np.nan)
    else:
        spec = np.array([np.median(np.asarray(specificity, dtype=np.float64)[raw == c]) for c in range(k)])
    shared = shared_elements(spec, chance)
    order = element_order(medians, sizes, shared if shared_last else None)
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
        specificity=spec[order],
        shared=shared[order],
    )
