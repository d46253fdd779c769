"""Tests of the clustering models beyond k-means: scikit-learn's MiniBatchKMeans and
GaussianMixture through the factory (their objective traces and final values), Agglomerative,
DBSCAN / HDBSCAN, choose_k by BIC, noise-aware metrics, the contingency table, and
`fit_clustering` (CPU, tiny data, seconds)."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.cluster import DBSCAN, HDBSCAN, MiniBatchKMeans
from sklearn.datasets import make_blobs, make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

import gcmodels.clustering.fitting as clusterers
from gcmodels.clustering.estimators import Agglomerative, TracedKMeans, choose_k, clustering_metrics, contingency
from gcmodels.clustering.fitting import (
    AGGLOMERATIVE_MAX_SAMPLES,
    centroid_distances,
    estimate_eps,
    fit_clustering,
    make_clusterer,
    make_reducer,
    objective_traces,
)
from gcmodels.config import ClusterConfig, ConfigError, Settings


@parametrize_with_checks(
    [
        Agglomerative(n_clusters=3),
        DBSCAN(),
        HDBSCAN(copy=True),
    ]
)
def test_sklearn_estimator_contract(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------------ mini-batch k-means


def test_minibatch_kmeans_is_close_to_lloyd_and_reports_its_final_inertia():
    X, y = make_blobs(n_samples=3000, centers=6, n_features=5, cluster_std=1.0, random_state=0)
    mb = fit_clustering(X, ClusterConfig(k=6, batch_size=256))
    lloyd = fit_clustering(X, ClusterConfig(k=6, n_init=2))
    assert isinstance(mb.estimator, MiniBatchKMeans) and mb.estimator.batch_size == 256
    assert mb.finals["inertia"] <= 1.02 * lloyd.finals["inertia"]
    assert adjusted_rand_score(y, mb.assignments) > 0.95
    # scikit-learn's mini-batch k-means records no objective per pass: no trace, only the final value
    assert mb.traces == {} and mb.finals == {"inertia": pytest.approx(mb.estimator.inertia_)}
    assert lloyd.finals["inertia"] == pytest.approx(lloyd.traces["inertia"][-1], rel=1e-12)
    again = fit_clustering(X.astype(np.float32), ClusterConfig(k=6, batch_size=256))
    np.testing.assert_array_equal(
        again.assignments, fit_clustering(X.astype(np.float32), ClusterConfig(k=6, batch_size=256)).assignments
    )


# ------------------------------------------------------------------ Gaussian mixture


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmm_log_likelihood_trace_never_decreases_and_ends_at_the_fit(cov, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 4)) * rng.uniform(0.5, 2.0, size=4) + 50.0
    gmm = GaussianMixture(5, covariance_type=cov, tol=0.0, reg_covar=0.0, max_iter=30, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(X)
    trace = np.asarray(objective_traces(gmm, X)["log_likelihood"])
    assert len(trace) == gmm.n_iter_ + 1 >= 10
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[:-1]))
    np.testing.assert_array_equal(trace[:-1], gmm.lower_bounds_)
    assert trace[-1] == pytest.approx(gmm.score(X), rel=1e-12)


def test_gmm_through_the_factory_and_on_one_row():
    X, y = make_blobs(n_samples=600, centers=[[0, 0], [10, 0], [0, 10]], random_state=0)
    res = fit_clustering(X, ClusterConfig(method="gmm", k=3))
    assert isinstance(res.estimator, GaussianMixture) and res.estimator.tol == 1e-4  # gcmine's EM tolerance
    assert adjusted_rand_score(y, res.assignments) > 0.95
    np.testing.assert_array_equal(res.assignments, res.estimator.predict(X))
    assert res.finals == {"log_likelihood": pytest.approx(res.estimator.score(X))}
    one = fit_clustering(np.zeros((1, 2)), ClusterConfig(method="gmm"))  # scikit-learn's EM needs two rows
    assert one.k == 1 and one.assignments.tolist() == [0] and one.traces == {}


# ------------------------------------------------------------------ agglomerative


def test_agglomerative_linkage_matches_scipy_ward():
    X, _ = make_blobs(n_samples=40, centers=3, n_features=2, random_state=0)
    agg = Agglomerative(3).fit(X)
    Z = agg.linkage_matrix_
    assert Z.shape == (39, 4)
    assert Z[-1, 3] == 40  # the root holds every row
    np.testing.assert_allclose(np.sort(Z[:, 2]), np.sort(scipy_linkage(X, "ward")[:, 2]), rtol=1e-8)
    # cutting the tree into 3 gives the labels
    assert adjusted_rand_score(fcluster(Z, 3, criterion="maxclust"), agg.labels_) == pytest.approx(1.0)
    dendro = agg.dendrogram(p=5)
    assert len(dendro["ivl"]) == 5 and len(dendro["icoord"]) == 4


def test_agglomerative_refuses_quadratic_sizes():
    with pytest.raises(
        ValueError, match=f"at most {AGGLOMERATIVE_MAX_SAMPLES} rows, got {AGGLOMERATIVE_MAX_SAMPLES + 1}"
    ):
        make_clusterer(ClusterConfig(method="agglomerative", k=3), AGGLOMERATIVE_MAX_SAMPLES + 1)


# ------------------------------------------------------------------ density methods


def test_dbscan_finds_two_moons_that_kmeans_splits_wrongly():
    X, y = make_moons(n_samples=400, noise=0.05, random_state=0)
    db = fit_clustering(X, ClusterConfig(method="dbscan", eps=0.2, min_samples=5))
    km = fit_clustering(X, ClusterConfig(method="kmeans", k=2))
    assert db.k == 2
    assert adjusted_rand_score(y, db.assignments) > 0.95
    assert adjusted_rand_score(y, km.assignments) < 0.6
    assert clustering_metrics(X, db.assignments, y)["nmi"] > 0.9


def test_dbscan_noise_is_minus_one_and_reported():
    X, _ = make_blobs(n_samples=200, centers=[[0, 0], [10, 10]], cluster_std=0.5, random_state=0)
    X = np.vstack([X, [[50.0, 50.0], [-50.0, 40.0]]])  # two outliers
    res = fit_clustering(X, ClusterConfig(method="dbscan", eps=1.0, min_samples=5))
    assert res.assignments[-2:].tolist() == [-1, -1]
    assert res.k == 2
    assert res.metadata["noise_fraction"] == pytest.approx(2 / 202)
    assert np.isnan(res.distance[-2:]).all() and np.isfinite(res.distance[:-2]).all()
    y = np.array(["a"] * 100 + ["b"] * 100 + [None, None], dtype=object)
    y[:200] = np.where(_blob_ids(X[:200]) == 0, "a", "b")
    m = clustering_metrics(X, res.assignments, y)
    assert m["noise_fraction"] == pytest.approx(2 / 202)
    assert m["nmi"] == pytest.approx(1.0) and m["silhouette"] > 0.8  # noise rows unlabelled here


def _blob_ids(X: np.ndarray) -> np.ndarray:
    return (X[:, 0] > 5).astype(int)


def test_hdbscan_through_the_factory():
    X, y = make_blobs(n_samples=300, centers=[[0, 0], [8, 8], [-8, 8]], cluster_std=0.7, random_state=0)
    res = fit_clustering(X, ClusterConfig(method="hdbscan", min_cluster_size=10))
    assert res.k == 3
    assert adjusted_rand_score(y[res.assignments >= 0], res.assignments[res.assignments >= 0]) > 0.95


def test_estimate_eps_is_the_median_kth_neighbour_distance():
    X = np.arange(10.0)[:, None]  # unit spacing: the 4th neighbour (self counted) is 2 away, 3 at the ends
    assert estimate_eps(X, 4) == pytest.approx(2.0)
    assert estimate_eps(X, 4, quantile=1.0) == pytest.approx(3.0)
    assert estimate_eps(np.ones((5, 2)), 3) == 1.0


# ------------------------------------------------------------------ choose_k, metrics


def test_choose_k_by_bic_finds_three_gaussians():
    X, _ = make_blobs(n_samples=450, centers=[[0, 0], [12, 0], [0, 12]], cluster_std=1.0, random_state=0)
    k, curve = choose_k(X, 1, 6, n_init=1, max_iter=100, random_state=0, criterion="bic")
    assert k == 3
    assert sorted(curve) == list(range(1, 7))
    assert curve[3] == min(curve.values())


def test_choose_k_on_a_subset_and_bad_criterion():
    X, _ = make_blobs(n_samples=2000, centers=[[0, 0], [20, 0], [0, 20], [20, 20]], random_state=0)
    k, _ = choose_k(X, 2, 6, n_init=1, max_iter=50, random_state=0, fit_size=300)
    assert k == 4
    with pytest.raises(ValueError, match="criterion must be 'silhouette' or 'bic', got 'aic'"):
        choose_k(X, 2, 6, n_init=1, max_iter=50, random_state=0, criterion="aic")


def test_contingency_table():
    labels = np.array(["cat", "dog", "cat", None, "dog", "cat"], dtype=object)
    assignments = np.array([0, 1, 0, 1, -1, 1])
    table = contingency(labels, assignments)
    assert isinstance(table, pd.DataFrame)
    assert table.index.name == "label" and table.columns.name == "cluster"
    assert table.index.tolist() == ["cat", "dog"] and table.columns.tolist() == [-1, 0, 1]
    np.testing.assert_array_equal(table.to_numpy(), [[0, 2, 1], [1, 0, 1]])
    assert table.dtypes.unique().tolist() == [np.dtype(np.int64)]


def test_silhouette_is_sampled_above_sample_size():
    X, y = make_blobs(n_samples=600, centers=3, random_state=0)
    full = clustering_metrics(X, y)
    sampled = clustering_metrics(X, y, sample_size=200, random_state=0)
    assert sampled["silhouette"] == pytest.approx(full["silhouette"], abs=0.05)
    assert sampled["calinski_harabasz"] == full["calinski_harabasz"]  # linear metrics use every row


def test_all_noise_gives_nan_internal_scores():
    X = np.random.default_rng(0).normal(size=(20, 2))
    m = clustering_metrics(X, -np.ones(20, dtype=int), ["a"] * 20)
    assert m["noise_fraction"] == 1.0 and math.isnan(m["silhouette"])


def test_centroid_distances():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    d = centroid_distances(X, np.array([0, 0, 1, -1]))
    np.testing.assert_allclose(d[:3], [1.0, 1.0, 0.0])
    assert np.isnan(d[3])


def test_centroid_distances_blockwise_match(monkeypatch):
    rng = np.random.default_rng(0)
    X, a = rng.normal(size=(500, 3)).astype(np.float32), rng.integers(-1, 4, size=500)
    whole = centroid_distances(X, a)
    monkeypatch.setattr(clusterers, "_BLOCK", 37)
    np.testing.assert_allclose(centroid_distances(X, a), whole, rtol=1e-12)
    means = np.stack([X[a == j].astype(np.float64).mean(axis=0) for j in range(4)])
    expected = np.linalg.norm(X - means[np.clip(a, 0, None)], axis=1)
    np.testing.assert_allclose(whole[a >= 0], expected[a >= 0], rtol=1e-6)
    assert np.isnan(whole[a < 0]).all()


# ------------------------------------------------------------------ factory and pipeline


@pytest.mark.parametrize("method", ["kmeans", "gmm", "agglomerative"])
def test_fit_clustering_chooses_k_for_every_k_method(method):
    X, y = make_blobs(n_samples=240, centers=[[0, 0], [15, 0], [0, 15], [15, 15]], cluster_std=1.0, random_state=0)
    res = fit_clustering(X, ClusterConfig(method=method, k_max=7))
    assert res.k == 4 and res.metadata["k_source"] == "silhouette"
    assert sorted(res.k_curve) == list(range(2, 8))
    assert adjusted_rand_score(y, res.assignments) > 0.95
    assert res.assignments.dtype == np.int64 and res.distance.shape == (240,)


def test_fit_clustering_traces_reduction_and_metadata():
    X, _ = make_blobs(n_samples=300, centers=3, n_features=10, random_state=0)
    res = fit_clustering(X, ClusterConfig(method="gmm", k=3, reduce="pca", reduce_dim=4, covariance_type="diag"))
    assert res.features.shape == (300, 4) and res.metadata["reduce_dim"] == 4
    assert list(res.traces) == ["log_likelihood"]
    assert res.metadata["estimator"] == "GaussianMixture" and res.metadata["params"]["covariance_type"] == "diag"
    assert math.isfinite(res.metadata["bic"])
    km = fit_clustering(X, ClusterConfig(k=3))
    assert list(km.traces) == ["inertia"] and km.metadata["k_source"] == "config"


def test_lloyd_and_em_run_in_float64_on_float32_embeddings():
    """scikit-learn computes in the data's dtype; the stage fits float64 so that the objective (and
    its trace) is the exact one of the float32 embeddings, to 1e-12 rather than float32's 1e-7."""
    X, _ = make_blobs(n_samples=2000, centers=5, n_features=8, cluster_std=2.0, random_state=0)
    X = (X + 1000.0).astype(np.float32)
    res = fit_clustering(X, ClusterConfig(k=5))
    a = res.assignments
    means = np.stack([X[a == j].astype(np.float64).mean(axis=0) for j in range(5)])
    exact = ((X.astype(np.float64) - means[a]) ** 2).sum()
    assert res.finals["inertia"] == pytest.approx(exact, rel=1e-12)
    assert res.traces["inertia"][-1] == pytest.approx(exact, rel=1e-12)
    assert res.features.dtype == np.float32  # the metrics still see the embeddings as they are
    gmm = fit_clustering(X, ClusterConfig(method="gmm", k=5, covariance_type="diag"))
    assert gmm.finals["log_likelihood"] == pytest.approx(gmm.estimator.score(X.astype(np.float64)), rel=1e-12)


def test_kmeans_switches_to_minibatches_above_the_threshold():
    cfg = ClusterConfig(k=3, minibatch_above=100)
    assert isinstance(make_clusterer(cfg, 100), TracedKMeans)
    assert isinstance(make_clusterer(cfg, 101), MiniBatchKMeans)
    assert make_clusterer(ClusterConfig(k=3, batch_size=32), 10).batch_size == 32
    X, _ = make_blobs(n_samples=500, centers=[[0, 0], [10, 0], [0, 10]], random_state=0)
    res = fit_clustering(X, ClusterConfig(minibatch_above=100, k_max=5, k_sample=200))
    assert res.metadata["estimator"] == "MiniBatchKMeans" and res.k == 3


def test_fit_clustering_with_tiny_inputs():
    assert fit_clustering(np.zeros((1, 3)), ClusterConfig()).k == 1
    res = fit_clustering(np.array([[0.0], [1.0]]), ClusterConfig())
    assert res.metadata["k_source"] == "only 2 rows" and res.k == 1
    assert fit_clustering(np.array([[0.0], [1.0]]), ClusterConfig(k=5)).k == 2


def test_make_clusterer_needs_k_and_eps():
    with pytest.raises(ValueError, match="needs k"):
        make_clusterer(ClusterConfig(method="gmm"), 10)
    with pytest.raises(ValueError, match="needs eps"):
        make_clusterer(ClusterConfig(method="dbscan"), 10)


def test_reducers():
    assert make_reducer("none", 3) is None
    assert make_reducer("pca", 3).n_components == 3
    if importlib.util.find_spec("umap") is None:  # importing umap-learn costs 10-30 s: not done here
        with pytest.raises(ValueError, match="umap-learn"):
            make_reducer("umap", 2)
    with pytest.raises(ValueError, match="'none', 'pca' or 'umap'"):
        make_reducer("tsne", 2)


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({"method": "dbscan", "k": 4}, ["cluster", "k (4)", "'dbscan'"]),
        ({"method": "spectral"}, ["cluster.method"]),
        ({"k_criterion": "aic"}, ["cluster.k_criterion"]),
        ({"reduce": "tsne"}, ["cluster.reduce"]),
        ({"eps": 0}, ["cluster.eps"]),
        ({"dec_hidden": [64, 0]}, ["dec_hidden"]),
    ],
)
def test_cluster_config_errors_name_the_field(values, needles):
    with pytest.raises(ConfigError) as err:
        Settings.from_dict({"cluster": values})
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_cluster_config_defaults_are_unchanged():
    cfg = ClusterConfig()
    assert cfg.method == "kmeans" and cfg.k is None and cfg.k_criterion == "silhouette" and cfg.reduce == "none"
