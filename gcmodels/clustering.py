"""K-means clustering, the choice of k by silhouette, and clustering quality metrics.

`KMeans` follows the scikit-learn estimator contract (see ``sklearn/cluster/_kmeans.py``):
``__init__`` only stores parameters, ``fit`` validates and sets attributes ending in ``_``,
``predict``/``transform``/``score`` check that it was fitted, and randomness comes in through
``random_state``. Public functions validate their input; private ``_`` helpers assume it valid.

The objective minimised is the inertia (within-cluster sum of squares)

    J(C, l) = sum_i || x_i - c_{l_i} ||^2                                   (1)

by Lloyd's algorithm: alternately assign every point to its nearest centre (which minimises (1)
over l for fixed C) and move every centre to the mean of its points (which minimises (1) over C
for fixed l), so J never increases. Centres start from greedy k-means++ (Arthur & Vassilvitskii,
2007): each new centre is drawn with probability proportional to D(x)^2, the squared distance
to the nearest centre chosen so far, keeping the best of a few such draws.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils import Tags, check_array, check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["KMeans", "choose_k", "clustering_metrics"]

# Rows per block of the distance computation: memory is O(_CHUNK x k), never O(n x k x d).
_CHUNK = 65536

RandomStateLike = int | np.random.RandomState | None


# --------------------------------------------------------------------------------------------
# private numerics (inputs assumed valid: 2-D float arrays of one dtype, k >= 1)
# --------------------------------------------------------------------------------------------


def _row_chunks(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of the blocks of at most _CHUNK rows of an array with `n` rows."""
    for start in range(0, n, _CHUNK):
        yield start, min(start + _CHUNK, n)


def _sq_dists_block(X: np.ndarray, x_sq: np.ndarray, C: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ||x||^2 - 2 x.c + ||c||^2, clipped at 0.

    X: (m, d), x_sq: (m,), C: (k, d), c_sq: (k,) -> (m, k), dtype of X.
    """
    D = X @ C.T  # (m, k)
    D *= -2
    D += x_sq[:, None]
    D += c_sq[None, :]
    np.maximum(D, 0, out=D)
    return D


def _row_sq_norms(X: np.ndarray) -> np.ndarray:
    """Squared norms of the rows. X: (n, d) -> (n,), dtype of X."""
    return np.einsum("ij,ij->i", X, X)


def _assign(X: np.ndarray, x_sq: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment step: the nearest centre of every row, and the squared distance to it.

    X: (n, d), x_sq: (n,), C: (k, d) -> labels (n,) int64, min_sq_dist (n,) float64.
    The argmin uses the expanded formula blockwise; the returned distance is recomputed exactly
    as ||x - c_l||^2 (no cancellation), so that the objective (1) is accurate.
    """
    n = X.shape[0]
    c_sq = _row_sq_norms(C)
    labels = np.empty(n, dtype=np.int64)
    min_sq = np.empty(n, dtype=np.float64)
    for start, stop in _row_chunks(n):
        Xb = X[start:stop]
        lab = _sq_dists_block(Xb, x_sq[start:stop], C, c_sq).argmin(axis=1)
        diff = Xb - C[lab]  # (m, d)
        labels[start:stop] = lab
        min_sq[start:stop] = np.einsum("ij,ij->i", diff, diff)
    return labels, min_sq


def _kmeans_plusplus(X: np.ndarray, x_sq: np.ndarray, n_clusters: int, rng: np.random.RandomState) -> np.ndarray:
    """Greedy k-means++ seeding. X: (n, d), x_sq: (n,) -> centres (n_clusters, d), rows of X.

    Every new centre is the best (lowest resulting potential sum_i D(x_i)^2) of
    2 + floor(log k) candidates drawn with probability D(x)^2 / sum_i D(x_i)^2.
    """
    n, d = X.shape
    n_trials = 2 + int(math.log(n_clusters))
    centers = np.empty((n_clusters, d), dtype=X.dtype)
    first = rng.randint(n)
    centers[0] = X[first]
    closest = _sq_dists_block(X, x_sq, X[first : first + 1], x_sq[first : first + 1])[:, 0].astype(np.float64)
    potential = float(closest.sum())
    for c in range(1, n_clusters):
        if potential > 0:
            draws = rng.uniform(size=n_trials) * potential
            candidates = np.searchsorted(np.cumsum(closest), draws)
            np.clip(candidates, None, n - 1, out=candidates)
        else:  # every point coincides with a chosen centre: any point will do
            candidates = rng.randint(n, size=n_trials)
        cand, cand_sq = X[candidates], x_sq[candidates]
        # D(x)^2 after adding each candidate: (n, n_trials), computed blockwise over rows
        new_closest = np.empty((n, n_trials), dtype=np.float64)
        for start, stop in _row_chunks(n):
            D = _sq_dists_block(X[start:stop], x_sq[start:stop], cand, cand_sq)
            np.minimum(closest[start:stop, None], D, out=new_closest[start:stop])
        pots = new_closest.sum(axis=0)  # (n_trials,)
        t = int(np.argmin(pots))
        centers[c] = X[candidates[t]]
        closest, potential = new_closest[:, t].copy(), float(pots[t])
    return centers


def _update_centers(
    X: np.ndarray, labels: np.ndarray, min_sq: np.ndarray, old_centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Update step: centres to the means of their points, re-seeding empty clusters.

    X: (n, d), labels: (n,), min_sq: (n,), old_centers: (k, d) -> centres (k, d), labels (n,).
    An empty cluster takes the point farthest from its own centre (never the last point of
    another cluster); that point costs 0 afterwards and its old cluster's mean is recomputed
    without it, so (1) does not increase. A cluster still empty (fewer distinct points than k)
    keeps its old centre.
    """
    n = X.shape[0]
    k = old_centers.shape[0]
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        labels = labels.copy()
        order = np.argsort(-min_sq, kind="stable")
        ptr = 0
        for j in empty:
            while ptr < n and (counts[labels[order[ptr]]] <= 1 or min_sq[order[ptr]] <= 0):
                ptr += 1
            if ptr == n:
                break
            i = order[ptr]
            counts[labels[i]] -= 1
            labels[i] = j
            counts[j] = 1
            ptr += 1
    sums = np.zeros((k, X.shape[1]), dtype=np.float64)
    for start, stop in _row_chunks(n):
        m = stop - start
        onehot = sp.csr_matrix((np.ones(m), (labels[start:stop], np.arange(m))), shape=(k, m))
        sums += onehot @ X[start:stop].astype(np.float64, copy=False)
    centers = old_centers.copy()
    filled = counts > 0
    centers[filled] = (sums[filled] / counts[filled, None]).astype(X.dtype)
    return centers, labels


def _lloyd(
    X: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, list[float], int]:
    """Lloyd iterations from `centers` (k, d) on X (n, d).

    Returns centres (k, d), labels (n,), the objective (1) after every assignment step
    (len n_iter + 1, non-increasing) and n_iter. Stops when the labels no longer change, when
    the centre shift sum_j ||c_j' - c_j||^2 <= tol (absolute), or after max_iter iterations.
    """
    labels, min_sq = _assign(X, x_sq, centers)
    trace = [float(min_sq.sum())]
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        new_centers, labels = _update_centers(X, labels, min_sq, centers)
        shift = float(((new_centers.astype(np.float64) - centers) ** 2).sum())
        centers = new_centers
        new_labels, min_sq = _assign(X, x_sq, centers)
        trace.append(float(min_sq.sum()))
        unchanged = np.array_equal(new_labels, labels)
        labels = new_labels
        if unchanged or shift <= tol:
            break
    return centers, labels, trace, n_iter


def _check_positive_int(value: Any, name: str, owner: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means by Lloyd's algorithm with greedy k-means++ seeding and restarts.

    Parameters
    ----------
    n_clusters : number of clusters k.
    n_init : restarts from different seeds; the one with the lowest inertia is kept.
    max_iter : Lloyd iterations per restart.
    tol : relative tolerance: a restart stops once the centre shift sum_j ||c_j' - c_j||^2 is at
        most ``tol * mean_j Var(X[:, j])``.
    random_state : int, RandomState or None; seeds the k-means++ draws.

    Attributes
    ----------
    cluster_centers_ : (k, d) centres, dtype of the training data (float32 or float64).
    labels_ : (n,) int64 index of the nearest centre of every training row.
    inertia_ : float, objective (1) of the kept restart on the training data.
    n_iter_ : int, Lloyd iterations of the kept restart.
    inertia_trace_ : list[float], (1) after every assignment step of the kept restart
        (length n_iter_ + 1, non-increasing).
    n_features_in_ : int, d.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 4,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _check_params(self, n_samples: int) -> None:
        name = type(self).__name__
        _check_positive_int(self.n_clusters, "n_clusters", name)
        _check_positive_int(self.n_init, "n_init", name)
        _check_positive_int(self.max_iter, "max_iter", name)
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"{name}: tol must be a non-negative number, got {self.tol!r}")
        if n_samples < self.n_clusters:
            raise ValueError(
                f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({n_samples})"
            )

    def fit(self, X: Any, y: Any = None) -> "KMeans":
        """Fit on X (n, d); `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", copy=False)
        n = X.shape[0]
        self._check_params(n)
        rng = check_random_state(self.random_state)

        # Work on centred data: the expanded distance formula loses less to cancellation.
        mean = X.mean(axis=0, dtype=np.float64)
        Xc = X - mean.astype(X.dtype)  # a new array: X itself is never modified
        x_sq = _row_sq_norms(Xc)
        tol = float(self.tol) * float(np.var(X, axis=0, dtype=np.float64).mean())

        runs = [
            _lloyd(Xc, x_sq, _kmeans_plusplus(Xc, x_sq, self.n_clusters, rng), self.max_iter, tol)
            for _ in range(self.n_init)
        ]
        # the lowest final objective; the first such restart on ties
        centers, labels, trace, n_iter = min(runs, key=lambda run: run[2][-1])

        n_distinct = np.unique(labels).size
        if n_distinct < self.n_clusters:
            warnings.warn(
                f"KMeans: number of distinct clusters ({n_distinct}) found smaller than "
                f"n_clusters ({self.n_clusters}); X probably has duplicate points",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.cluster_centers_ = (centers.astype(np.float64) + mean).astype(X.dtype)
        self.labels_ = labels
        self.inertia_ = float(trace[-1])
        self.inertia_trace_ = trace
        self.n_iter_ = int(n_iter)
        return self

    def _validate_test(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validated X (m, d) and the centres (k, d) cast to its dtype."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)
        return X, self.cluster_centers_.astype(X.dtype, copy=False)

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest centre. X: (m, d) -> (m,) int64."""
        X, C = self._validate_test(X)
        return _assign(X, _row_sq_norms(X), C)[0]

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances to the centres. X: (m, d) -> (m, k), dtype of X."""
        X, C = self._validate_test(X)
        x_sq, c_sq = _row_sq_norms(X), _row_sq_norms(C)
        out = np.empty((X.shape[0], C.shape[0]), dtype=X.dtype)
        for start, stop in _row_chunks(X.shape[0]):
            out[start:stop] = _sq_dists_block(X[start:stop], x_sq[start:stop], C, c_sq)
        np.sqrt(out, out=out)
        return out

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the inertia (1) of X (m, d) under the fitted centres (higher is better)."""
        X, C = self._validate_test(X)
        return -float(_assign(X, _row_sq_norms(X), C)[1].sum())


# --------------------------------------------------------------------------------------------
# choosing k, and metrics
# --------------------------------------------------------------------------------------------


def _silhouette_or_nan(X: np.ndarray, assignments: np.ndarray) -> float:
    """Silhouette of a clustering, NaN unless 2 <= #clusters <= n - 1."""
    n_clusters = np.unique(assignments).size
    if not 2 <= n_clusters <= X.shape[0] - 1:
        return math.nan
    return float(silhouette_score(X, assignments))


def choose_k(
    X: Any,
    k_min: int,
    k_max: int,
    *,
    n_init: int,
    max_iter: int,
    random_state: RandomStateLike,
) -> tuple[int, dict[int, float]]:
    """Pick the number of clusters by the mean silhouette coefficient.

    Fits `KMeans` for every k in [k_min, min(k_max, n - 1)] on X (n, d) and scores it by the
    silhouette s = mean_i (b_i - a_i) / max(a_i, b_i) (Rousseeuw, 1987), computed on one random
    subset of min(n, 2000) rows drawn once from `random_state` and shared by every k (the same
    speed-up as ``silhouette_score(..., sample_size=...)``, but comparable across k).

    Returns the k with the highest silhouette (the smallest such k on ties; k_min when no k has
    a defined silhouette, e.g. all rows identical) and the curve {k: silhouette} (NaN where
    undefined).
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    n = X.shape[0]
    if n < 3:
        raise ValueError(f"choose_k: needs at least 3 samples to compare clusterings by silhouette, got {n}")
    for name, value in (("k_min", k_min), ("k_max", k_max)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"choose_k: {name} must be an integer, got {value!r}")
    if k_min < 2:
        raise ValueError(f"choose_k: k_min must be at least 2 (silhouette needs two clusters), got {k_min}")
    k_hi = min(k_max, n - 1)
    if k_min > k_hi:
        raise ValueError(
            f"choose_k: no k to try: k_min={k_min}, k_max={k_max}, and at most n_samples - 1 = {n - 1} "
            "clusters have a silhouette"
        )
    rng = check_random_state(random_state)
    sample = np.sort(rng.permutation(n)[: min(n, 2000)])
    curve: dict[int, float] = {}
    for k in range(k_min, k_hi + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(k, n_init=n_init, max_iter=max_iter, random_state=rng).fit(X)
        curve[k] = _silhouette_or_nan(X[sample], km.labels_[sample])
    scored = {k: s for k, s in curve.items() if not math.isnan(s)}
    best = max(scored, key=lambda k: (scored[k], -k)) if scored else k_min
    return best, curve


def _missing(value: Any) -> bool:
    """True for None and float NaN (pandas' missing values), the labels that are ignored."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pd.NA-like
    except (TypeError, ValueError):
        return False


def clustering_metrics(X: Any, assignments: Any, labels: Any = None) -> dict[str, float]:
    """Internal and (when labels are given) external quality of a clustering.

    X: (n, d) features, assignments: (n,) cluster ids, labels: (n,) class names, None/NaN for
    unlabelled rows, or None.

    Returns ``silhouette`` (higher is better, in [-1, 1]), ``calinski_harabasz`` (between- over
    within-cluster dispersion, higher is better) and ``davies_bouldin`` (mean worst-case
    similarity of clusters, lower is better); each is NaN unless 2 <= #clusters <= n - 1.
    With `labels`, on the labelled rows only: ``nmi`` (normalized mutual information), ``ari``
    (adjusted Rand index) and ``purity`` = (1/m) sum_clusters max_label |cluster & label|;
    NaN when no row is labelled.
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    assignments = np.asarray(assignments)
    n = X.shape[0]
    if assignments.ndim != 1 or assignments.shape[0] != n:
        raise ValueError(f"clustering_metrics: assignments must have shape ({n},), got {assignments.shape}")
    n_clusters = np.unique(assignments).size
    out: dict[str, float] = {"silhouette": math.nan, "calinski_harabasz": math.nan, "davies_bouldin": math.nan}
    if 2 <= n_clusters <= n - 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["silhouette"] = float(silhouette_score(X, assignments))
            out["calinski_harabasz"] = float(calinski_harabasz_score(X, assignments))
            out["davies_bouldin"] = float(davies_bouldin_score(X, assignments))
    if labels is None:
        return out

    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"clustering_metrics: labels must have shape ({n},), got {labels.shape}")
    keep = np.array([not _missing(v) for v in labels], dtype=bool)
    if not keep.any():
        out.update(nmi=math.nan, ari=math.nan, purity=math.nan)
        return out
    y = labels[keep].astype(str)
    a = assignments[keep]
    table = contingency_matrix(y, a)  # (n_labels, n_clusters)
    out["nmi"] = float(normalized_mutual_info_score(y, a))
    out["ari"] = float(adjusted_rand_score(y, a))
    out["purity"] = float(np.asarray(table.max(axis=0)).sum() / keep.sum())
    return out
