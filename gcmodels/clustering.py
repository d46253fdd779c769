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

The other estimators of this module follow the same contract: `MiniBatchKMeans` (mini-batch
updates, for millions of rows), `GaussianMixture` (EM, log-likelihood per iteration, BIC) and
`Agglomerative` (the merge tree as a dendrogram). `choose_k` picks k by silhouette or BIC;
`clustering_metrics` and `contingency` score a clustering, with -1 marking noise (DBSCAN,
HDBSCAN). Factories that build these from a `ClusterConfig` live in `gcmodels.clusterers`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import scipy.sparse as sp
from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import AgglomerativeClustering as SkAgglomerative
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

__all__ = [
    "Agglomerative",
    "GaussianMixture",
    "KMeans",
    "MiniBatchKMeans",
    "choose_k",
    "clustering_metrics",
    "contingency",
]

# MiB of pairwise distances the silhouette holds at once (scikit-learn's working_memory)
_SILHOUETTE_MIB = 64
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


class MiniBatchKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means by mini-batch updates (Sculley, 2010), for collections too large for Lloyd.

    Seeding: greedy k-means++ followed by Lloyd iterations on a random subset of `init_size`
    rows, the best of `n_init` subsets (by their inertia). Then `max_iter` passes (epochs) over
    the data in random batches of `batch_size` rows: every centre moves towards the mean of its
    batch points with the per-centre learning rate 1 / (points it has absorbed so far),

        c_j <- c_j + (sum_{i in B_j} x_i - |B_j| c_j) / N_j,   N_j <- N_j + |B_j|          (2)

    After every epoch the objective (1) is evaluated on all the data (one blockwise assignment
    pass, O(block x k) memory); training stops when it improves by less than ``tol`` (relative),
    and the centres with the lowest (1) are kept. Memory is linear in n: the data are never
    copied (batches are gathered rows), and no n x n or n x k x d array is formed.

    Parameters
    ----------
    n_clusters : number of clusters k.
    batch_size : rows per mini-batch.
    n_init : seeding subsets tried; the lowest subset inertia is kept.
    max_iter : passes over the data.
    tol : relative improvement of (1) between passes below which training stops.
    init_size : rows of a seeding subset; None = min(n, max(10 000, 3 * batch_size, 3 * k)).
    random_state : int, RandomState or None; seeds the subsets, k-means++ and the batch order.

    Attributes
    ----------
    cluster_centers_ : (k, d) centres, dtype of the training data.
    labels_ : (n,) int64 nearest centre of every training row.
    inertia_ : float, objective (1) of the kept centres on the training data.
    inertia_trace_ : list[float], (1) on all the data after seeding and after every pass
        (mini-batch updates do not guarantee a monotone sequence).
    n_iter_ : int, passes done.
    n_steps_ : int, mini-batch updates done.
    n_features_in_ : int, d.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        batch_size: int = 4096,
        n_init: int = 3,
        max_iter: int = 20,
        tol: float = 1e-4,
        init_size: int | None = None,
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.batch_size = batch_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_size = init_size
        self.random_state = random_state

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _check_params(self, n_samples: int) -> None:
        name = type(self).__name__
        for param in ("n_clusters", "batch_size", "n_init", "max_iter"):
            _check_positive_int(getattr(self, param), param, name)
        if self.init_size is not None:
            _check_positive_int(self.init_size, "init_size", name)
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"{name}: tol must be a non-negative number, got {self.tol!r}")
        if n_samples < self.n_clusters:
            raise ValueError(
                f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({n_samples})"
            )

    def fit(self, X: Any, y: Any = None) -> "MiniBatchKMeans":
        """Fit on X (n, d); `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", copy=False)
        n = X.shape[0]
        self._check_params(n)
        rng = check_random_state(self.random_state)
        k = int(self.n_clusters)
        init_size = self.init_size or max(10_000, 3 * int(self.batch_size), 3 * k)
        init_size = max(min(n, int(init_size)), k)

        centers, best_sample_inertia = None, math.inf
        for _ in range(self.n_init):
            rows = np.sort(rng.choice(n, init_size, replace=False)) if init_size < n else np.arange(n)
            S = X[rows]
            s_mean = S.mean(axis=0, dtype=np.float64).astype(X.dtype)
            S = S - s_mean
            s_sq = _row_sq_norms(S)
            C = _kmeans_plusplus(S, s_sq, k, rng)
            C, _, trace, _ = _lloyd(S, s_sq, C, max_iter=10, tol=0.0)
            if trace[-1] < best_sample_inertia:
                best_sample_inertia, centers = trace[-1], C.astype(np.float64) + s_mean

        assert centers is not None  # n_init >= 1
        labels, min_sq = _assign_unnormed(X, centers.astype(X.dtype))
        trace = [float(min_sq.sum())]
        best = (trace[0], centers.copy(), labels)
        counts = np.zeros(k, dtype=np.float64)
        batch = int(self.batch_size)
        n_steps = n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                rows = np.sort(order[start : start + batch])
                Xb = X[rows]
                lab = _assign(Xb, _row_sq_norms(Xb), centers.astype(X.dtype))[0]
                sizes = np.bincount(lab, minlength=k).astype(np.float64)
                onehot = sp.csr_matrix((np.ones(lab.size), (lab, np.arange(lab.size))), shape=(k, lab.size))
                sums = onehot @ Xb.astype(np.float64, copy=False)  # (k, d)
                counts += sizes
                hit = sizes > 0
                centers[hit] += (sums[hit] - sizes[hit, None] * centers[hit]) / counts[hit, None]  # (2)
                n_steps += 1
            labels, min_sq = _assign_unnormed(X, centers.astype(X.dtype))
            trace.append(float(min_sq.sum()))
            if trace[-1] < best[0]:
                best = (trace[-1], centers.copy(), labels)
            if trace[-2] - trace[-1] <= float(self.tol) * trace[-2]:
                break

        inertia, centers, labels = best
        _warn_if_fewer_clusters(type(self).__name__, labels, k)
        self.cluster_centers_ = centers.astype(X.dtype)
        self.labels_ = labels
        self.inertia_ = float(inertia)
        self.inertia_trace_ = trace
        self.n_iter_ = int(n_iter)
        self.n_steps_ = int(n_steps)
        return self

    def _validate_test(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)
        return X, self.cluster_centers_.astype(X.dtype, copy=False)

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest centre. X: (m, d) -> (m,) int64."""
        X, C = self._validate_test(X)
        return _assign_unnormed(X, C)[0]

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances to the centres. X: (m, d) -> (m, k), dtype of X."""
        X, C = self._validate_test(X)
        return _distances(X, C)

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the inertia (1) of X (m, d) under the fitted centres (higher is better)."""
        X, C = self._validate_test(X)
        return -float(_assign_unnormed(X, C)[1].sum())


def _assign_unnormed(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_assign` with the row norms computed block by block (no (n,) float copy of X).

    X: (n, d), C: (k, d) -> labels (n,) int64, min_sq_dist (n,) float64."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    min_sq = np.empty(n, dtype=np.float64)
    for start, stop in _row_chunks(n):
        Xb = X[start:stop]
        labels[start:stop], min_sq[start:stop] = _assign(Xb, _row_sq_norms(Xb), C)
    return labels, min_sq


def _distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Euclidean distances X (m, d) to C (k, d) -> (m, k), dtype of X, computed blockwise."""
    x_sq, c_sq = _row_sq_norms(X), _row_sq_norms(C)
    out = np.empty((X.shape[0], C.shape[0]), dtype=X.dtype)
    for start, stop in _row_chunks(X.shape[0]):
        out[start:stop] = _sq_dists_block(X[start:stop], x_sq[start:stop], C, c_sq)
    np.sqrt(out, out=out)
    return out


def _warn_if_fewer_clusters(name: str, labels: np.ndarray, k: int) -> None:
    n_distinct = np.unique(labels).size
    if n_distinct < k:
        warnings.warn(
            f"{name}: number of distinct clusters ({n_distinct}) found smaller than "
            f"n_clusters ({k}); X probably has duplicate points",
            ConvergenceWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------------

_COVARIANCE_TYPES = ("full", "diag", "spherical")


def _gmm_log_prob(X: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, cov_type: str) -> np.ndarray:
    """log N(x_i | mu_j, Sigma_j) for every row and component: X (n, d) -> (n, k) float64.

    prec_chol: the Cholesky factors of the precisions, (k, d, d) upper for "full" (P_j with
    P_j P_j^T = Sigma_j^-1), (k, d) for "diag", (k,) for "spherical" (1 / standard deviations).
    Blockwise over rows: memory O(block x max(k, d)).
    """
    n, d = X.shape
    k = means.shape[0]
    out = np.empty((n, k), dtype=np.float64)
    if cov_type == "full":
        log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)  # (k,) = log |P_j|
        shifts = np.einsum("kd,kde->ke", means, prec_chol)  # (k, d) = mu_j P_j
        for start, stop in _row_chunks(n):
            Xb = X[start:stop]
            for j in range(k):
                y = Xb @ prec_chol[j]
                y -= shifts[j]
                out[start:stop, j] = np.einsum("ij,ij->i", y, y)
    else:
        prec = prec_chol**2 if cov_type == "diag" else np.repeat((prec_chol**2)[:, None], d, axis=1)  # (k, d)
        log_det = 0.5 * np.log(prec).sum(axis=1)
        mu_prec = means * prec  # (k, d)
        const = (means * mu_prec).sum(axis=1)  # (k,)
        for start, stop in _row_chunks(n):
            Xb = X[start:stop]
            m = (Xb * Xb) @ prec.T  # (m, k)
            m -= 2.0 * (Xb @ mu_prec.T)
            m += const
            np.maximum(m, 0, out=m)
            out[start:stop] = m
    out *= -0.5
    out += log_det - 0.5 * d * math.log(2 * math.pi)
    return out


def _gmm_e_step(
    X: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, cov_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """Responsibilities r_ij = p(j | x_i) (n, k) and the per-row log-likelihood log p(x_i) (n,)."""
    weighted = _gmm_log_prob(X, means, prec_chol, cov_type)
    weighted += np.log(weights)
    log_px = logsumexp(weighted, axis=1)
    weighted -= log_px[:, None]
    np.exp(weighted, out=weighted)
    return weighted, log_px


def _gmm_m_step(
    X: np.ndarray, resp: np.ndarray, cov_type: str, reg_covar: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximisation: weights (k,), means (k, d), covariances and their precision Cholesky factors.

    The covariances get ``reg_covar`` added to their diagonal (positive definite for any data).
    """
    n, d = X.shape
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # (k,)
    means = (resp.T @ X) / nk[:, None]  # (k, d)
    k = means.shape[0]
    if cov_type == "full":
        cov = np.zeros((k, d, d), dtype=np.float64)
        for start, stop in _row_chunks(n):
            Xb = X[start:stop]
            for j in range(k):
                diff = Xb - means[j]
                cov[j] += (resp[start:stop, j, None] * diff).T @ diff
        cov /= nk[:, None, None]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        try:
            L = np.linalg.cholesky(cov)  # (k, d, d) lower, Sigma_j = L_j L_j^T
        except np.linalg.LinAlgError:
            raise ValueError(
                "GaussianMixture: a covariance matrix is not positive definite (collapsed component "
                f"or duplicate points); increase reg_covar (now {reg_covar!r}) or use fewer components"
            ) from None
        # P_j = L_j^-T: P_j P_j^T = (L_j L_j^T)^-1
        prec_chol = np.linalg.solve(L, np.broadcast_to(np.eye(d), L.shape)).transpose(0, 2, 1)
    else:
        avg_x2 = np.zeros((k, d), dtype=np.float64)
        for start, stop in _row_chunks(n):
            Xb = X[start:stop]
            avg_x2 += resp[start:stop].T @ (Xb * Xb)
        var = avg_x2 / nk[:, None] - means**2  # (k, d)
        np.maximum(var, 0, out=var)
        var += reg_covar
        cov = var if cov_type == "diag" else var.mean(axis=1)
        prec_chol = 1.0 / np.sqrt(cov)
    return nk / n, means, cov, prec_chol


class GaussianMixture(ClusterMixin, BaseEstimator):
    """Gaussian mixture fitted by expectation-maximisation (Dempster, Laird & Rubin, 1977).

    The mean log-likelihood

        L(theta) = (1/n) sum_i log sum_j pi_j N(x_i | mu_j, Sigma_j)                       (3)

    never decreases across EM iterations (up to the ``reg_covar`` added to every covariance);
    it is recorded after every E-step in ``log_likelihood_trace_``. Components start from the
    hard assignments of a `KMeans` run (k-means++ seeding). ``bic(X)`` is
    -2 n L + p log n, with p the number of free parameters, for choosing k.

    Parameters
    ----------
    n_clusters : number of mixture components k (the clusters).
    covariance_type : "full" (one d x d matrix per component), "diag" or "spherical".
    tol : EM stops when (3) improves by less than this (absolute).
    reg_covar : added to the diagonal of every covariance.
    max_iter : EM iterations per initialisation.
    n_init : initialisations; the highest final (3) is kept.
    random_state : int, RandomState or None; seeds the k-means initialisation.

    Attributes
    ----------
    weights_ : (k,), means_ : (k, d), covariances_ : (k, d, d) | (k, d) | (k,) by covariance_type.
    precisions_cholesky_ : Cholesky factors of the precisions, same shapes.
    labels_ : (n,) int64 most probable component of every training row.
    log_likelihood_trace_ : list[float], (3) after every E-step of the kept run (len n_iter_ + 1).
    lower_bound_ : float, the final (3). converged_ : bool. n_iter_ : int. n_features_in_ : int.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        covariance_type: str = "full",
        tol: float = 1e-4,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def _check_params(self, n_samples: int) -> None:
        name = type(self).__name__
        for param in ("n_clusters", "max_iter", "n_init"):
            _check_positive_int(getattr(self, param), param, name)
        if self.covariance_type not in _COVARIANCE_TYPES:
            raise ValueError(f"{name}: covariance_type must be one of {_COVARIANCE_TYPES}, got {self.covariance_type!r}")
        for param in ("tol", "reg_covar"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name}: {param} must be a non-negative number, got {value!r}")
        if n_samples < self.n_clusters:
            raise ValueError(
                f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({n_samples})"
            )

    def fit(self, X: Any, y: Any = None) -> "GaussianMixture":
        """Fit on X (n, d) float; `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C")
        n = X.shape[0]
        self._check_params(n)
        rng = check_random_state(self.random_state)
        k, cov_type, reg = int(self.n_clusters), str(self.covariance_type), float(self.reg_covar)
        # EM on centred float64 data (a new array; X itself is never modified)
        self._shift = X.mean(axis=0, dtype=np.float64)
        Xc = X.astype(np.float64) - self._shift

        best = None
        for _ in range(self.n_init):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                init = KMeans(k, n_init=1, max_iter=20, random_state=rng).fit(Xc).labels_
            resp = np.zeros((n, k), dtype=np.float64)
            resp[np.arange(n), init] = 1.0
            trace: list[float] = []
            converged = False
            n_iter = 0
            params = _gmm_m_step(Xc, resp, cov_type, reg)
            resp, log_px = _gmm_e_step(Xc, params[0], params[1], params[3], cov_type)
            trace.append(float(log_px.mean()))
            for n_iter in range(1, self.max_iter + 1):
                params = _gmm_m_step(Xc, resp, cov_type, reg)
                resp, log_px = _gmm_e_step(Xc, params[0], params[1], params[3], cov_type)
                trace.append(float(log_px.mean()))
                if abs(trace[-1] - trace[-2]) < self.tol:
                    converged = True
                    break
            if best is None or trace[-1] > best[0][-1]:
                best = (trace, params, resp.argmax(axis=1).astype(np.int64), converged, n_iter)

        assert best is not None  # n_init >= 1
        trace, (weights, means, cov, prec_chol), labels, converged, n_iter = best
        if not converged:
            warnings.warn(
                f"GaussianMixture: EM did not converge in max_iter={self.max_iter} iterations "
                f"(tol={self.tol}); increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.weights_ = weights
        self.means_ = means + self._shift
        self.covariances_ = cov
        self.precisions_cholesky_ = prec_chol
        self.labels_ = labels
        self.log_likelihood_trace_ = trace
        self.lower_bound_ = float(trace[-1])
        self.converged_ = bool(converged)
        self.n_iter_ = int(n_iter)
        return self

    def _e_step(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)
        Xc = X.astype(np.float64) - self._shift
        return _gmm_e_step(Xc, self.weights_, self.means_ - self._shift, self.precisions_cholesky_, self.covariance_type)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component. X: (m, d) -> (m,) int64."""
        return self._e_step(X)[0].argmax(axis=1).astype(np.int64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities p(j | x). X: (m, d) -> (m, k) float64, rows sum to 1."""
        return self._e_step(X)[0]

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) under the mixture. X: (m, d) -> (m,) float64."""
        return self._e_step(X)[1]

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood (3) of X (m, d)."""
        return float(self.score_samples(X).mean())

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k}[self.covariance_type]
        return int(cov + k * d + k - 1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion -2 n L + p log n of X (m, d) (lower is better)."""
        n = np.asarray(X).shape[0]
        return float(-2.0 * self.score(X) * n + self._n_parameters() * math.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion -2 n L + 2 p of X (m, d) (lower is better)."""
        n = np.asarray(X).shape[0]
        return float(-2.0 * self.score(X) * n + 2 * self._n_parameters())


# --------------------------------------------------------------------------------------------
# agglomerative clustering with its dendrogram
# --------------------------------------------------------------------------------------------


class Agglomerative(ClusterMixin, BaseEstimator):
    """Agglomerative (hierarchical) clustering that keeps the whole merge tree.

    A thin wrapper of ``sklearn.cluster.AgglomerativeClustering`` with the full tree and the merge
    distances computed, exposed as a SciPy linkage matrix for the dendrogram. Memory and time are
    quadratic in n (the pairwise structure of the merge): for tens of thousands of rows at most.

    Parameters
    ----------
    n_clusters : clusters the tree is cut into.
    linkage : "ward", "complete", "average" or "single".

    Attributes
    ----------
    labels_ : (n,) int64. children_ : (n - 1, 2) merged nodes (ids >= n are earlier merges).
    distances_ : (n - 1,) merge heights. linkage_matrix_ : (n - 1, 4) SciPy linkage matrix
        [child a, child b, height, leaves under the new node]. n_features_in_ : int.
    """

    def __init__(self, n_clusters: int = 2, *, linkage: str = "ward") -> None:
        self.n_clusters = n_clusters
        self.linkage = linkage

    def fit(self, X: Any, y: Any = None) -> "Agglomerative":
        """Fit on X (n, d); `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n = X.shape[0]
        name = type(self).__name__
        _check_positive_int(self.n_clusters, "n_clusters", name)
        if self.linkage not in ("ward", "complete", "average", "single"):
            raise ValueError(f"{name}: linkage must be ward, complete, average or single, got {self.linkage!r}")
        if n < self.n_clusters:
            raise ValueError(f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({n})")
        if n == 1:  # nothing to merge
            self.labels_ = np.zeros(1, dtype=np.int64)
            self.children_ = np.empty((0, 2), dtype=np.int64)
            self.distances_ = np.empty(0, dtype=np.float64)
            self.linkage_matrix_ = np.empty((0, 4), dtype=np.float64)
            return self
        model = SkAgglomerative(
            n_clusters=int(self.n_clusters), linkage=self.linkage, compute_full_tree=True, compute_distances=True
        ).fit(X)
        children = np.asarray(model.children_, dtype=np.int64)
        sizes = np.empty(n - 1, dtype=np.float64)
        for i, (a, b) in enumerate(children):
            sizes[i] = (1.0 if a < n else sizes[a - n]) + (1.0 if b < n else sizes[b - n])
        distances = np.asarray(model.distances_, dtype=np.float64)
        self.labels_ = np.asarray(model.labels_, dtype=np.int64)
        self.children_ = children
        self.distances_ = distances
        self.linkage_matrix_ = np.column_stack([children.astype(np.float64), distances, sizes])
        return self

    def dendrogram(self, p: int = 30) -> dict[str, Any]:
        """The dendrogram of the top `p` merges, SciPy's ``dendrogram(..., no_plot=True)`` dict
        (``icoord``, ``dcoord``: the segments to draw; ``ivl``: leaf labels, "(n)" for a leaf
        standing for n rows; ``leaves``)."""
        check_is_fitted(self)
        if self.linkage_matrix_.shape[0] == 0:
            return {"icoord": [], "dcoord": [], "ivl": ["0"], "leaves": [0], "color_list": []}
        # merge heights must be non-decreasing for the drawing; they are for these linkages up to
        # rounding, which the running maximum removes
        Z = self.linkage_matrix_.copy()
        Z[:, 2] = np.maximum.accumulate(Z[:, 2])
        return scipy_dendrogram(Z, p=p, truncate_mode="lastp", no_plot=True)


# --------------------------------------------------------------------------------------------
# choosing k, and metrics
# --------------------------------------------------------------------------------------------


def _silhouette_or_nan(X: np.ndarray, assignments: np.ndarray) -> float:
    """Silhouette of a clustering, NaN unless 2 <= #clusters <= n - 1."""
    n_clusters = np.unique(assignments).size
    if not 2 <= n_clusters <= X.shape[0] - 1:
        return math.nan
    with sklearn.config_context(working_memory=_SILHOUETTE_MIB):  # bounds the pairwise-distance chunks
        return float(silhouette_score(X, assignments))


def choose_k(
    X: Any,
    k_min: int,
    k_max: int,
    *,
    n_init: int,
    max_iter: int,
    random_state: RandomStateLike,
    criterion: str = "silhouette",
    sample_size: int = 2000,
    fit_size: int | None = None,
    make_estimator: Callable[[int], Any] | None = None,
) -> tuple[int, dict[int, float]]:
    """Pick the number of clusters by the silhouette or by the BIC.

    For every k in [k_min, k_hi], fits ``make_estimator(k)`` (default: `KMeans` for the
    silhouette, a full-covariance `GaussianMixture` for the BIC; both with `n_init`, `max_iter`
    and `random_state`) on X (n, d), or on one random subset of `fit_size` rows when n is larger
    (drawn once, shared by every k), and scores it:

    - ``criterion="silhouette"``: s = mean_i (b_i - a_i) / max(a_i, b_i) (Rousseeuw, 1987) on
      one random subset of min(n, sample_size) rows, shared by every k (comparable across k);
      k_min >= 2, k_hi = min(k_max, n - 1). The highest s wins.
    - ``criterion="bic"``: BIC = -2 log L + p log n (Schwarz, 1978) of the fitted estimator
      (it must have a ``bic(X)`` method); k_min >= 1, k_hi = min(k_max, n). The lowest wins.

    Returns the best k (the smallest on ties; k_min when no k has a defined score, e.g. all rows
    identical) and the curve {k: score} (NaN where undefined).
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    n = X.shape[0]
    if criterion not in ("silhouette", "bic"):
        raise ValueError(f"choose_k: criterion must be 'silhouette' or 'bic', got {criterion!r}")
    for name, value in (("k_min", k_min), ("k_max", k_max)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"choose_k: {name} must be an integer, got {value!r}")
    if fit_size is not None:
        _check_positive_int(fit_size, "fit_size", "choose_k")
    rng = check_random_state(random_state)
    if fit_size is not None and n > fit_size:
        X = X[np.sort(rng.permutation(n)[:fit_size])]
        n = fit_size
    if criterion == "silhouette":
        if n < 3:
            raise ValueError(f"choose_k: needs at least 3 samples to compare clusterings by silhouette, got {n}")
        if k_min < 2:
            raise ValueError(f"choose_k: k_min must be at least 2 (silhouette needs two clusters), got {k_min}")
        k_hi = min(k_max, n - 1)
        if k_min > k_hi:
            raise ValueError(
                f"choose_k: no k to try: k_min={k_min}, k_max={k_max}, and at most n_samples - 1 = {n - 1} "
                "clusters have a silhouette"
            )
    else:
        if k_min < 1:
            raise ValueError(f"choose_k: k_min must be at least 1, got {k_min}")
        k_hi = min(k_max, n)
        if k_min > k_hi:
            raise ValueError(f"choose_k: no k to try: k_min={k_min}, k_max={k_max}, n_samples={n}")

    if make_estimator is None:
        if criterion == "silhouette":
            make_estimator = lambda k: KMeans(k, n_init=n_init, max_iter=max_iter, random_state=rng)  # noqa: E731
        else:
            make_estimator = lambda k: GaussianMixture(k, n_init=n_init, max_iter=max_iter, random_state=rng)  # noqa: E731
    sample = np.sort(rng.permutation(n)[: min(n, sample_size)])
    curve: dict[int, float] = {}
    for k in range(k_min, k_hi + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = make_estimator(k).fit(X)
        if criterion == "silhouette":
            curve[k] = _silhouette_or_nan(X[sample], np.asarray(est.labels_)[sample])
        else:
            value = float(est.bic(X))
            curve[k] = value if math.isfinite(value) else math.nan
    scored = {k: s for k, s in curve.items() if not math.isnan(s)}
    if not scored:
        return k_min, curve
    sign = 1.0 if criterion == "silhouette" else -1.0
    return max(scored, key=lambda k: (sign * scored[k], -k)), curve


def _missing(value: Any) -> bool:
    """True for None and float NaN (pandas' missing values), the labels that are ignored."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pd.NA-like
    except (TypeError, ValueError):
        return False


def _labelled(labels: Any, n: int, owner: str) -> np.ndarray:
    """Validate labels (n,) and return the mask of labelled rows (not None / NaN)."""
    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{owner}: labels must have shape ({n},), got {labels.shape}")
    return ~np.asarray(pd.isna(labels), dtype=bool)


def contingency(labels: Any, assignments: Any) -> pd.DataFrame:
    """The label x cluster contingency table of the labelled rows.

    labels: (n,) class names (None/NaN = unlabelled, ignored); assignments: (n,) int cluster ids
    (-1 = noise, kept as its own column). Returns a DataFrame of int64 counts, index ``label``
    (sorted label strings), columns ``cluster`` (sorted cluster ids).
    """
    assignments = np.asarray(assignments)
    if assignments.ndim != 1:
        raise ValueError(f"contingency: assignments must be 1-D, got shape {assignments.shape}")
    keep = _labelled(labels, assignments.shape[0], "contingency")
    y = np.asarray(labels, dtype=object)[keep].astype(str)
    a = assignments[keep].astype(np.int64)
    table = pd.crosstab(pd.Series(y, name="label"), pd.Series(a, name="cluster"))
    return table.astype(np.int64)


def clustering_metrics(
    X: Any,
    assignments: Any,
    labels: Any = None,
    *,
    sample_size: int = 10_000,
    random_state: RandomStateLike = 0,
) -> dict[str, float]:
    """Internal and (when labels are given) external quality of a clustering.

    X: (n, d) features, assignments: (n,) cluster ids (-1 = noise, as DBSCAN and HDBSCAN mark
    it), labels: (n,) class names, None/NaN for unlabelled rows, or None.

    Returns ``silhouette`` (higher is better, in [-1, 1]), ``calinski_harabasz`` (between- over
    within-cluster dispersion, higher is better) and ``davies_bouldin`` (mean worst-case
    similarity of clusters, lower is better); each is NaN unless 2 <= #clusters <= n - 1. The
    silhouette is computed on a random subset of `sample_size` rows when there are more (it is
    quadratic in the rows), seeded by `random_state`.
    With `labels`, on the labelled rows only: ``nmi`` (normalized mutual information), ``ari``
    (adjusted Rand index) and ``purity`` = (1/m) sum_clusters max_label |cluster & label|;
    NaN when no row is labelled.

    Noise: when some assignments are -1, ``noise_fraction`` (share of rows marked -1) is added,
    the internal scores are computed on the clustered rows only, and the external scores count
    the noise as one more cluster (so that leaving points out is not rewarded).
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    assignments = np.asarray(assignments)
    n = X.shape[0]
    if assignments.ndim != 1 or assignments.shape[0] != n:
        raise ValueError(f"clustering_metrics: assignments must have shape ({n},), got {assignments.shape}")
    _check_positive_int(sample_size, "sample_size", "clustering_metrics")
    noise = assignments == -1
    has_noise = bool(noise.any())
    Xc, ac = (X[~noise], assignments[~noise]) if has_noise else (X, assignments)
    m = Xc.shape[0]
    n_clusters = np.unique(ac).size
    out: dict[str, float] = {"silhouette": math.nan, "calinski_harabasz": math.nan, "davies_bouldin": math.nan}
    if 2 <= n_clusters <= m - 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if m > sample_size:
                rows = np.sort(check_random_state(random_state).permutation(m)[:sample_size])
                out["silhouette"] = _silhouette_or_nan(Xc[rows], ac[rows])
            else:
                out["silhouette"] = _silhouette_or_nan(Xc, ac)
            out["calinski_harabasz"] = float(calinski_harabasz_score(Xc, ac))
            out["davies_bouldin"] = float(davies_bouldin_score(Xc, ac))
    if has_noise:
        out["noise_fraction"] = float(noise.mean())
    if labels is None:
        return out

    keep = _labelled(labels, n, "clustering_metrics")
    if not keep.any():
        out.update(nmi=math.nan, ari=math.nan, purity=math.nan)
        return out
    y = np.asarray(labels, dtype=object)[keep].astype(str)
    a = assignments[keep]
    table = contingency_matrix(y, a, sparse=True)  # (n_labels, n_clusters)
    out["nmi"] = float(normalized_mutual_info_score(y, a))
    out["ari"] = float(adjusted_rand_score(y, a))
    out["purity"] = float(np.asarray(table.max(axis=0).todense()).sum() / keep.sum())
    return out
