"""Clustering models built from a `ClusterConfig`, and the whole cluster step on an array.

- `make_reducer(method, dim, random_state)`: PCA, UMAP (when umap-learn is installed) or None.
- `make_clusterer(config, n_samples, k=..., eps=...)`: the scikit-learn estimator the config
  names (`TracedKMeans` / ``sklearn.cluster.MiniBatchKMeans`` above ``config.minibatch_above``
  rows, ``sklearn.mixture.GaussianMixture``, ``sklearn.cluster.DBSCAN`` / ``HDBSCAN``,
  `Agglomerative`, `DEC`).
- `estimate_eps(X, min_samples, ...)`: a DBSCAN radius from the data.
- `fit_clustering(X, config) -> ClusteringResult`: reduce, choose k, fit, and collect what the
  cluster stage writes (assignments with -1 = noise, distances to the cluster means, the
  objective traces and final values, the k curve, metadata).

Scale: for n rows of dimension d, everything here is linear in n in memory except the methods
that are quadratic by nature (agglomerative refuses more than `AGGLOMERATIVE_MAX_SAMPLES`
rows); k is chosen on a random subset of ``config.k_sample`` rows, the silhouette metric on
``config.silhouette_sample`` rows. Lloyd k-means (at most ``config.minibatch_above`` rows) and
EM fit a float64 copy of the (n, d) features; mini-batch k-means fits them as they are.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN, HDBSCAN, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_array, check_random_state

from gcmodels.clustering.estimators import GMM_TOL, Agglomerative, RandomStateLike, TracedKMeans, choose_k
from gcmodels.config import ClusterConfig

__all__ = [
    "AGGLOMERATIVE_MAX_SAMPLES",
    "CLUSTERERS",
    "ClusteringResult",
    "centroid_distances",
    "estimate_eps",
    "fit_clustering",
    "make_clusterer",
    "make_reducer",
]

CLUSTERERS = ("kmeans", "gmm", "dbscan", "hdbscan", "agglomerative", "dec")
# methods that take the number of clusters k
_NEEDS_K = ("kmeans", "gmm", "agglomerative", "dec")
# Ward / average linkage keep O(n^2) distances: 20 000 rows are 1.6 GB of float64 already.
AGGLOMERATIVE_MAX_SAMPLES = 20_000
# default mini-batch of k-means when it switches to mini-batches on its own
_DEFAULT_BATCH = 4096
# rows per block when computing distances to the cluster means
_BLOCK = 65536


def make_reducer(method: str, dim: int, *, random_state: RandomStateLike = 0) -> Any | None:
    """An unfitted reducer (fit_transform / transform) to `dim` dimensions, or None for "none".

    "pca": ``sklearn.decomposition.PCA``; "umap": ``umap.UMAP`` (an optional dependency: a
    clear error names the missing package).
    """
    if method == "none":
        return None
    if not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"make_reducer: dim must be a positive integer, got {dim!r}")
    if method == "pca":
        # exact, from the d x d covariance: one pass over the rows (the embeddings have d << n)
        return PCA(n_components=int(dim), svd_solver="covariance_eigh", random_state=random_state)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("cluster.reduce='umap' needs the umap-learn package (pip install umap-learn)") from None
        seed = random_state if isinstance(random_state, numbers.Integral) else None
        return umap.UMAP(n_components=int(dim), random_state=seed, n_neighbors=15, min_dist=0.0)
    raise ValueError(f"make_reducer: method must be 'none', 'pca' or 'umap', got {method!r}")


def make_clusterer(
    config: ClusterConfig,
    n_samples: int,
    *,
    k: int | None = None,
    eps: float | None = None,
    device: str = "cpu",
    trace: bool = True,
) -> Any:
    """The unfitted estimator `config.method` names, for `n_samples` rows.

    k: the number of clusters for kmeans / gmm / agglomerative / dec (default ``config.k``;
    one of the two must be set; clipped to n_samples). eps: the DBSCAN radius (default
    ``config.eps``; one must be set, see `estimate_eps`). device: where DEC trains. trace:
    whether k-means records its objective per iteration (the fits that only choose k do not).
    k-means uses mini-batches when ``config.batch_size`` is set or n_samples exceeds
    ``config.minibatch_above``. Agglomerative refuses more than `AGGLOMERATIVE_MAX_SAMPLES` rows.
    """
    method = config.method
    seed = config.seed
    if method in _NEEDS_K:
        k = config.k if k is None else k
        if k is None:
            raise ValueError(f"make_clusterer: cluster.method={method!r} needs k (cluster.k or a chosen k)")
        k = max(1, min(int(k), int(n_samples)))
    if method == "kmeans":
        if config.batch_size is not None or n_samples > config.minibatch_above:
            return MiniBatchKMeans(
                k,
                batch_size=config.batch_size or _DEFAULT_BATCH,
                n_init=config.n_init,
                max_iter=config.max_iter,
                random_state=seed,
            )
        assert k is not None  # set above for every method in _NEEDS_K
        return TracedKMeans(k, n_init=config.n_init, max_iter=config.max_iter, random_state=seed, trace=trace)
    if method == "gmm":
        return GaussianMixture(
            k,
            covariance_type=config.covariance_type,
            max_iter=config.max_iter,
            n_init=config.n_init,
            tol=GMM_TOL,
            random_state=seed,
        )
    if method == "dbscan":
        eps = config.eps if eps is None else eps
        if eps is None:
            raise ValueError("make_clusterer: cluster.method='dbscan' needs eps (cluster.eps or estimate_eps)")
        return DBSCAN(eps=float(eps), min_samples=config.min_samples)
    if method == "hdbscan":
        return HDBSCAN(min_cluster_size=config.min_cluster_size, min_samples=config.min_samples, copy=True)
    if method == "agglomerative":
        if n_samples > AGGLOMERATIVE_MAX_SAMPLES:
            raise ValueError(
                f"cluster.method='agglomerative' needs memory quadratic in the rows: at most "
                f"{AGGLOMERATIVE_MAX_SAMPLES} rows, got {n_samples}; use kmeans or gmm"
            )
        assert k is not None  # set above for every method in _NEEDS_K
        return Agglomerative(k, linkage=config.linkage)
    if method == "dec":
        from gcmodels.clustering.dec import DEC  # torch-heavy: imported only when used

        assert k is not None  # set above for every method in _NEEDS_K
        return DEC(
            k,
            hidden=tuple(config.dec_hidden),
            latent_dim=config.dec_latent_dim,
            pretrain_epochs=config.dec_pretrain_epochs,
            epochs=config.dec_epochs,
            batch_size=config.dec_batch_size,
            lr=config.dec_lr,
            n_init=config.n_init,
            random_state=seed,
            device=device,
        )
    raise ValueError(f"make_clusterer: unknown cluster.method {method!r}; expected one of {CLUSTERERS}")


def estimate_eps(
    X: Any, min_samples: int, *, quantile: float = 0.5, sample_size: int = 5000, random_state: RandomStateLike = 0
) -> float:
    """A DBSCAN radius: the `quantile` of the distance from a row to its `min_samples`-th
    nearest neighbour (the row itself counted, as DBSCAN counts it), over a random subset of
    `sample_size` rows (neighbours searched among all rows). With the median, about half of the
    rows are core points. X: (n, d) -> eps > 0 (the smallest positive distance if the quantile
    is 0, 1.0 for all-identical rows)."""
    X = check_array(X, dtype=[np.float64, np.float32])
    n = X.shape[0]
    if not isinstance(min_samples, numbers.Integral) or min_samples < 1:
        raise ValueError(f"estimate_eps: min_samples must be a positive integer, got {min_samples!r}")
    if not 0 <= quantile <= 1:
        raise ValueError(f"estimate_eps: quantile must be in [0, 1], got {quantile!r}")
    m = min(int(min_samples), n)
    rows = np.sort(check_random_state(random_state).permutation(n)[: min(n, sample_size)])
    dist, _ = NearestNeighbors(n_neighbors=m).fit(X).kneighbors(X[rows])
    kth = dist[:, m - 1]
    eps = float(np.quantile(kth, quantile))
    if eps > 0:
        return eps
    positive = kth[kth > 0]
    return float(positive.min()) if positive.size else 1.0


def centroid_distances(X: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row to the mean of its cluster (NaN for noise, -1).

    X: (n, d), assignments: (n,) int -> (n,) float64. Two passes over blocks of rows (the means,
    then the distances): the extra memory is O(block x d + k x d), never a copy of X.
    """
    X = np.asarray(X)
    assignments = np.asarray(assignments)
    n, d = X.shape
    out = np.full(n, np.nan, dtype=np.float64)
    if n == 0 or assignments.max(initial=-1) < 0:
        return out
    k = int(assignments.max()) + 1
    sums = np.zeros((k, d), dtype=np.float64)
    counts = np.zeros(k, dtype=np.float64)
    for start in range(0, n, _BLOCK):
        a = assignments[start : start + _BLOCK]
        keep = a >= 0
        ids = a[keep]
        onehot = sp.csr_matrix((np.ones(ids.size), (ids, np.arange(ids.size))), shape=(k, ids.size))
        sums += onehot @ X[start : start + _BLOCK][keep].astype(np.float64, copy=False)
        counts += np.bincount(ids, minlength=k)
    means = sums / np.maximum(counts, 1)[:, None]
    for start in range(0, n, _BLOCK):
        a = assignments[start : start + _BLOCK]
        keep = a >= 0
        diff = X[start : start + _BLOCK][keep].astype(np.float64, copy=False) - means[a[keep]]
        block = out[start : start + _BLOCK]  # a view
        block[keep] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


@dataclass
class ClusteringResult:
    """What `fit_clustering` found.

    assignments: (n,) int64 cluster ids, -1 = noise. distance: (n,) float64 distance to the mean
    of the row's cluster in the clustered space (NaN for noise). features: (n, d') the space that
    was clustered (the embeddings, or their reduction): compute `clustering_metrics` on it.
    k: clusters found (noise excluded). k_curve: {k: score} when k was chosen (else empty).
    traces: objective per iteration by name ("inertia", "log_likelihood", "kl",
    "pretrain_loss", "delta_label"); finals: the final value of each objective (the estimator's
    own inertia for k-means, also for mini-batch k-means, which has no trace). estimator /
    reducer: the fitted objects (the reducer is None without reduction). metadata: JSON-ready
    description for the artifact.
    """

    assignments: np.ndarray
    distance: np.ndarray
    features: np.ndarray
    k: int
    k_curve: dict[int, float] = field(default_factory=dict)
    traces: dict[str, list[float]] = field(default_factory=dict)
    finals: dict[str, float] = field(default_factory=dict)
    estimator: Any = None
    reducer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


_TRACES = {
    "inertia_trace_": "inertia",
    "pretrain_loss_trace_": "pretrain_loss",
    "kl_trace_": "kl",
    "delta_label_trace_": "delta_label",
}


def objective_traces(estimator: Any, X: np.ndarray) -> dict[str, list[float]]:
    """The objective per iteration of a fitted estimator, by name (see `ClusteringResult`).

    For ``GaussianMixture`` the mean log-likelihood: its ``lower_bounds_`` (the value of the
    parameters entering each EM iteration) followed by ``score(X)`` (the fitted parameters'),
    length n_iter_ + 1, non-decreasing. Estimators without iterations give {}.
    """
    if isinstance(estimator, GaussianMixture):
        return {"log_likelihood": [float(v) for v in estimator.lower_bounds_] + [float(estimator.score(X))]}
    return {
        name: [float(v) for v in getattr(estimator, attr)] for attr, name in _TRACES.items() if hasattr(estimator, attr)
    }


def _json_params(estimator: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in estimator.get_params(deep=False).items():
        if isinstance(value, (bool, numbers.Number, str)) or value is None:
            out[key] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, (tuple, list)):
            out[key] = [v.item() if isinstance(v, np.generic) else v for v in value]
    return out


def fit_clustering(X: Any, config: ClusterConfig, *, device: str = "cpu") -> ClusteringResult:
    """Reduce (``config.reduce``), choose k (``config.k_criterion`` when ``config.k`` is null and
    the method takes k), fit ``config.method`` and collect the result. X: (n, d) float, n >= 1.

    Choosing k: on a random subset of ``config.k_sample`` rows, between k_min and
    min(k_max, n - 1); the silhouette compares fits of the configured method (k-means for dec,
    whose fits are too costly to repeat), the BIC compares `GaussianMixture` fits with
    ``config.covariance_type``. With fewer than 3 rows, k = 1. DBSCAN without ``config.eps``
    uses `estimate_eps`.
    """
    X = check_array(X, dtype=[np.float32, np.float64])
    n, d = X.shape
    meta: dict[str, Any] = {"method": config.method, "n_samples": int(n), "input_dim": int(d), "reduce": config.reduce}
    reducer = make_reducer(config.reduce, min(config.reduce_dim, d, n), random_state=config.seed) if n > 1 else None
    features = X
    if reducer is not None:
        features = np.ascontiguousarray(reducer.fit_transform(X), dtype=X.dtype)
        meta["reduce_dim"] = int(features.shape[1])

    k: int | None = None
    curve: dict[int, float] = {}
    if config.method in _NEEDS_K:
        if config.k is not None:
            k = min(config.k, n)
            meta["k_source"] = "config" if k == config.k else f"config, clipped to the {n} rows"
        elif n >= 3 and config.k_min <= n - 1:
            fit_n = min(n, config.k_sample)
            if config.k_criterion == "bic":
                cfg = config.model_copy(update={"method": "gmm", "n_init": 1})
            elif config.method == "dec":
                cfg = config.model_copy(update={"method": "kmeans"})
            else:
                cfg = config
            k, curve = choose_k(
                features,
                config.k_min,
                min(config.k_max, n - 1),
                n_init=config.n_init,
                max_iter=config.max_iter,
                random_state=config.seed,
                criterion=config.k_criterion,
                fit_size=config.k_sample,
                make_estimator=lambda kk: make_clusterer(cfg, fit_n, k=kk, device=device, trace=False),
            )
            meta["k_source"] = config.k_criterion
        else:
            k = 1
            meta["k_source"] = f"only {n} rows"

    eps = None
    if config.method == "dbscan":
        eps = (
            config.eps
            if config.eps is not None
            else estimate_eps(features, config.min_samples, random_state=config.seed)
        )
        meta["eps"] = float(eps)
    estimator = make_clusterer(config, n, k=k, eps=eps, device=device)
    # Lloyd and EM in float64 (scikit-learn computes in the data's dtype): the objective and its trace
    # to full precision, as gcmine's own estimators gave them; mini-batch k-means, the path for
    # large n, stays in float32 to keep memory low
    fit_on = (
        features.astype(np.float64, copy=False) if isinstance(estimator, (GaussianMixture, TracedKMeans)) else features
    )
    if isinstance(estimator, GaussianMixture) and n < 2:  # EM needs two rows; one row is one cluster
        assignments, traces = np.zeros(n, dtype=np.int64), {}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message=".*copy.*", category=FutureWarning)
            assignments = np.asarray(estimator.fit_predict(fit_on), dtype=np.int64)
        traces = objective_traces(estimator, fit_on)
    finals = {name: trace[-1] for name, trace in traces.items() if trace}
    if hasattr(estimator, "inertia_"):
        finals["inertia"] = float(estimator.inertia_)
    found = int(np.unique(assignments[assignments >= 0]).size)
    noise = float((assignments == -1).mean()) if n else 0.0
    meta.update(
        estimator=type(estimator).__name__,
        params=_json_params(estimator),
        k=k,
        clusters_found=found,
        noise_fraction=noise,
    )
    if hasattr(estimator, "bic") and hasattr(estimator, "means_"):
        meta["bic"] = float(estimator.bic(fit_on))
    if curve:
        meta["k_curve"] = {str(kk): (None if math.isnan(v) else float(v)) for kk, v in curve.items()}
    return ClusteringResult(
        assignments=assignments,
        distance=centroid_distances(features, assignments),
        features=features,
        k=found,
        k_curve=curve,
        traces=traces,
        finals=finals,
        estimator=estimator,
        reducer=reducer,
        metadata=meta,
    )
