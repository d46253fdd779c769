"""Clustering estimators, the choice of k, and clustering quality metrics.

The estimators are scikit-learn's: `KMeans` (Lloyd's algorithm with greedy k-means++ seeding),
`MiniBatchKMeans` (Sculley, 2010) and `GaussianMixture` (EM), re-exported here. This module adds
only what scikit-learn does not give:

- `TracedKMeans`: k-means whose fit also records the objective after every Lloyd iteration,

      J(C, l) = sum_i || x_i - c_{l_i} ||^2                                   (1)

  (the inertia; non-increasing), for ``cluster_traces.parquet``;
- `Agglomerative`: agglomerative clustering with its merge tree as a SciPy linkage matrix;
- `choose_k` (k by silhouette or BIC), `clustering_metrics` and `contingency` (scores of a
  clustering, -1 marking noise as DBSCAN / HDBSCAN do).

Factories that build the estimators from a `ClusterConfig` live in `gcmodels.clustering.fitting`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import AgglomerativeClustering as SkAgglomerative
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    pairwise_distances_argmin_min,
    silhouette_score,
)
from sklearn.metrics.cluster import contingency_matrix
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = [
    "GMM_TOL",
    "Agglomerative",
    "GaussianMixture",
    "KMeans",
    "MiniBatchKMeans",
    "TracedKMeans",
    "choose_k",
    "clustering_metrics",
    "contingency",
    "lloyd_trace",
]

# MiB of pairwise distances the silhouette holds at once (scikit-learn's working_memory)
_SILHOUETTE_MIB = 64
#: EM stops when the mean log-likelihood improves by less than this (gcmine's mixtures)
GMM_TOL = 1e-4

RandomStateLike = int | np.random.RandomState | None


def _check_positive_int(value: Any, name: str, owner: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# k-means with the objective per iteration
# --------------------------------------------------------------------------------------------


def lloyd_trace(X: np.ndarray, init: np.ndarray, n_iter: int) -> tuple[list[float], np.ndarray]:
    """Objective (1) after every assignment step of `n_iter` Lloyd iterations from `init`,
    each iteration one scikit-learn fit warm-started at the previous centres
    (``KMeans(init=centres, n_init=1, max_iter=1)``: assign, move the centres to the means,
    assign again).

    X: (n, d), init: (k, d) -> (trace of length n_iter + 1, the labels (n,) after the last step).
    """
    labels, sq = pairwise_distances_argmin_min(X, init, metric="sqeuclidean")
    trace = [float(sq.sum(dtype=np.float64))]
    centers = init
    for _ in range(n_iter):
        step = KMeans(init.shape[0], init=centers, n_init=1, max_iter=1, tol=0.0).fit(X)
        centers, labels = step.cluster_centers_, step.labels_
        trace.append(float(step.inertia_))
    return trace, labels


class TracedKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """scikit-learn's `KMeans`, restart by restart, with the objective (1) per Lloyd iteration.

    scikit-learn keeps no per-iteration record (only ``verbose`` printing), so ``fit`` runs the
    `n_init` restarts itself: each draws its greedy k-means++ seeds with
    ``sklearn.cluster.kmeans_plusplus`` (on the centred data, as `KMeans` does) and is one
    ``KMeans(init=seeds, n_init=1)`` fit; the lowest inertia is kept (the first on ties). With
    `trace`, the kept restart is then replayed from its seeds one iteration at a time
    (`lloyd_trace`): the same assignments and updates as the kept fit, so the trace ends at its
    inertia (up to floating-point rounding; a replay that ends on other assignments is warned
    about). The replay costs about two restarts' worth of iterations.

    Parameters
    ----------
    n_clusters : number of clusters k.
    n_init : restarts; the one with the lowest inertia is kept.
    max_iter : Lloyd iterations per restart.
    tol : relative tolerance of `KMeans` (centre shift over the mean feature variance).
    random_state : int, RandomState or None; seeds the k-means++ draws.
    trace : record ``inertia_trace_`` (the replay); False skips it.

    Attributes
    ----------
    kmeans_ : the kept ``sklearn.cluster.KMeans``; cluster_centers_ (k, d), labels_ (n,) int64,
        inertia_, n_iter_, n_features_in_: its own.
    inertia_trace_ : list[float], (1) after every assignment step of the kept restart (length
        n_iter_ + 1, non-increasing; the last two are equal when the labels stopped changing);
        empty without `trace`.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 4,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: RandomStateLike = None,
        trace: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.trace = trace

    def fit(self, X: Any, y: Any = None) -> TracedKMeans:
        """Fit on X (n, d); `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C")
        name = type(self).__name__
        for param in ("n_clusters", "n_init", "max_iter"):
            _check_positive_int(getattr(self, param), param, name)
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"{name}: tol must be a non-negative number, got {self.tol!r}")
        if X.shape[0] < self.n_clusters:
            raise ValueError(
                f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({X.shape[0]})"
            )
        rng = check_random_state(self.random_state)
        mean = X.mean(axis=0)
        centred = X - mean
        best: tuple[KMeans, np.ndarray] | None = None
        for _ in range(self.n_init):
            init = kmeans_plusplus(centred, self.n_clusters, random_state=rng)[0] + mean
            km = KMeans(self.n_clusters, init=init, n_init=1, max_iter=self.max_iter, tol=self.tol).fit(X)
            if best is None or km.inertia_ < best[0].inertia_:
                best = (km, init)
        assert best is not None  # n_init >= 1
        self.kmeans_: KMeans
        self.kmeans_, init = best
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.labels_ = self.kmeans_.labels_.astype(np.int64)
        self.inertia_ = float(self.kmeans_.inertia_)
        self.n_iter_ = int(self.kmeans_.n_iter_)
        self.inertia_trace_: list[float] = []
        if self.trace:
            self.inertia_trace_, labels = lloyd_trace(X, init, self.n_iter_)
            if not np.array_equal(labels, self.labels_):
                warnings.warn(
                    f"{name}: the replayed objective trace ended on other assignments than the fit "
                    f"({int((labels != self.labels_).sum())} of {len(labels)} rows, a rounding tie)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest centre. X: (m, d) -> (m,)."""
        check_is_fitted(self)
        return self.kmeans_.predict(X)

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances to the centres. X: (m, d) -> (m, k)."""
        check_is_fitted(self)
        return self.kmeans_.transform(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the inertia (1) of X (m, d) under the fitted centres (higher is better)."""
        check_is_fitted(self)
        return float(self.kmeans_.score(X))


# --------------------------------------------------------------------------------------------
# agglomerative clustering with its dendrogram
# --------------------------------------------------------------------------------------------


class Agglomerative(ClusterMixin, BaseEstimator):
    """Agglomerative (hierarchical) clustering that keeps the whole merge tree.

    Kept because scikit-learn gives the merges but no linkage matrix: this thin wrapper of
    ``sklearn.cluster.AgglomerativeClustering`` (full tree, merge distances computed) adds the
    merge sizes, as the SciPy linkage matrix of ``cluster_linkage.parquet`` and the dendrogram. Memory and time are
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

    def fit(self, X: Any, y: Any = None) -> Agglomerative:
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
    (drawn once, shared by every k), in float64, and scores it:

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
    for name, given in (("k_min", k_min), ("k_max", k_max)):
        if not isinstance(given, numbers.Integral) or isinstance(given, bool):
            raise ValueError(f"choose_k: {name} must be an integer, got {given!r}")
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
            make_estimator = lambda k: GaussianMixture(  # noqa: E731
                k, n_init=n_init, max_iter=max_iter, tol=GMM_TOL, random_state=rng
            )
    sample = np.sort(rng.permutation(n)[: min(n, sample_size)])
    X_fit = X.astype(np.float64, copy=False)  # fits in float64, as gcmodels.clustering.fitting.fit_clustering does
    curve: dict[int, float] = {}
    for k in range(k_min, k_hi + 1):
        est = make_estimator(k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            assignments = np.asarray(est.fit_predict(X_fit))
        if criterion == "silhouette":
            curve[k] = _silhouette_or_nan(X[sample], assignments[sample])
        else:
            value = float(est.bic(X_fit))
            curve[k] = value if math.isfinite(value) else math.nan
    scored = {k: s for k, s in curve.items() if not math.isnan(s)}
    if not scored:
        return k_min, curve
    sign = 1.0 if criterion == "silhouette" else -1.0
    return max(scored, key=lambda k: (sign * scored[k], -k)), curve


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
