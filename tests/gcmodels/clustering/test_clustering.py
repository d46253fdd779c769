"""Tests of gcmodels.clustering.estimators: TracedKMeans (scikit-learn's k-means with its objective per
iteration), choose_k, clustering_metrics (CPU, seconds)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import sklearn.cluster
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gcmodels.clustering.estimators import TracedKMeans, choose_k, clustering_metrics, lloyd_trace


@parametrize_with_checks([TracedKMeans(n_clusters=3, n_init=2)])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ hand-computed toy cases


def test_two_pairs_on_a_line():
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    km = TracedKMeans(n_clusters=2, n_init=3, random_state=0).fit(X)
    order = np.argsort(km.cluster_centers_[:, 0])
    np.testing.assert_allclose(km.cluster_centers_[order, 0], [0.5, 10.5])
    assert km.inertia_ == pytest.approx(1.0)  # 4 points at distance 0.5
    assert km.labels_[0] == km.labels_[1] != km.labels_[2] == km.labels_[3]
    np.testing.assert_array_equal(km.predict([[0.2], [10.9]]), [order[0], order[1]])
    # distances of 0 to the centres 0.5 and 10.5
    np.testing.assert_allclose(km.transform([[0.0]])[0, order], [0.5, 10.5])
    assert km.score(X) == pytest.approx(-1.0)
    assert km.inertia_trace_[-1] == pytest.approx(km.inertia_)
    assert len(km.inertia_trace_) == km.n_iter_ + 1
    assert km.n_features_in_ == 1


def test_single_cluster_is_the_mean():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    km = TracedKMeans(n_clusters=1, random_state=0).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, [[1.0, 2.0]])
    assert km.inertia_ == pytest.approx(4 * (1 + 4))


def test_trace_by_hand_from_given_seeds():
    """Lloyd from the centres 0 and 1 on the line 0, 1, 2, 10, by hand: assignments {0}, {1, 2, 10}
    (J = 0 + 0 + 1 + 81); centres 0 and 13/3 -> {0, 1, 2}, {10}; centres 1 and 10 -> the same
    assignments (J = 1 + 0 + 1 + 0), after which nothing moves."""
    X = np.array([[0.0], [1.0], [2.0], [10.0]])
    trace, labels = lloyd_trace(X, np.array([[0.0], [1.0]]), 3)
    assert trace[0] == pytest.approx(82.0)
    assert trace[1] == pytest.approx(0 + 1 + 4 + (10 - 13 / 3) ** 2)
    assert trace[2] == pytest.approx(2.0)  # centres 1 and 10
    assert trace[3] == pytest.approx(2.0)  # converged: the last iteration moves nothing
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])


def test_fewer_distinct_points_than_clusters_warns_but_fits():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]]), 4, axis=0)  # 12 rows, 3 distinct
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        km = TracedKMeans(n_clusters=5, n_init=2, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(0.0)
    assert km.labels_.min() >= 0 and km.labels_.max() < 5


# ------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_inertia_trace_never_increases(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 5)) * rng.uniform(0.5, 3.0, size=5) + 100.0  # offset: cancellation
    km = TracedKMeans(n_clusters=9, n_init=2, max_iter=100, tol=0.0, random_state=seed).fit(X)
    trace = np.asarray(km.inertia_trace_)
    assert len(trace) == km.n_iter_ + 1 >= 2
    assert np.all(np.diff(trace) <= 1e-9 * np.abs(trace[:-1]))
    assert trace[-1] == pytest.approx(km.inertia_, rel=1e-12)
    # the reported inertia is the objective of the reported centres and labels
    exact = ((X - km.cluster_centers_[km.labels_]) ** 2).sum()
    assert km.inertia_ == pytest.approx(exact, rel=1e-9)
    np.testing.assert_array_equal(km.predict(X), km.labels_)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_is_sklearn_kmeans_and_its_trace_is_sklearns_objective(seed, capsys):
    """The restarts are sklearn's own (the same seeds, the same result as KMeans(n_init=4)), and
    the trace is the inertia sklearn's Lloyd loop reports per iteration (verbose=1) for the kept
    restart, started from the same seeds."""
    X, _ = make_blobs(n_samples=600, centers=6, n_features=4, cluster_std=3.0, random_state=seed)
    ours = TracedKMeans(n_clusters=6, n_init=4, random_state=seed).fit(X)
    ref = sklearn.cluster.KMeans(n_clusters=6, n_init=4, random_state=seed).fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)
    capsys.readouterr()
    init = ours.kmeans_.init  # the kept restart's seeds
    sklearn.cluster.KMeans(n_clusters=6, init=init, n_init=1, verbose=1).fit(X)
    printed = [float(v) for v in re.findall(r"Iteration \d+, inertia ([0-9.e+-]+)\.", capsys.readouterr().out)]
    assert len(printed) == ours.n_iter_
    np.testing.assert_allclose(ours.inertia_trace_[: len(printed)], printed, rtol=1e-10)


def test_float32_is_preserved():
    X, _ = make_blobs(n_samples=100, centers=3, n_features=2, random_state=0)
    km = TracedKMeans(n_clusters=3, n_init=1, random_state=0).fit(X.astype(np.float32))
    assert km.cluster_centers_.dtype == np.float32
    assert km.transform(X.astype(np.float32)).dtype == np.float32
    assert isinstance(km.inertia_, float)


def test_seeded_fits_are_reproducible_and_trace_is_optional():
    X, _ = make_blobs(n_samples=200, centers=5, n_features=3, random_state=0)
    a = TracedKMeans(n_clusters=5, random_state=7).fit(X)
    b = TracedKMeans(n_clusters=5, random_state=7).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_trace_ == b.inertia_trace_
    c = TracedKMeans(n_clusters=5, random_state=7, trace=False).fit(X)
    assert c.inertia_trace_ == [] and c.inertia_ == a.inertia_


# -------------------------------------------------------------------------- errors


def test_more_clusters_than_samples_is_a_clear_error():
    X = np.arange(10.0).reshape(5, 2)
    msg = re.escape("TracedKMeans: n_clusters=8 is larger than the number of samples (5)")
    with pytest.raises(ValueError, match=msg):
        TracedKMeans().fit(X)
    with pytest.raises(ValueError, match="number of samples"):
        TracedKMeans(n_clusters=2).fit(X[:1])


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_init": 0}, "n_init"),
        ({"max_iter": 1.5}, "max_iter"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_parameters_name_the_value(params, needle):
    X = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match=needle):
        TracedKMeans(**params).fit(X)


# ------------------------------------------------------------------------ choose_k


def test_choose_k_finds_four_separated_blobs():
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    X, _ = make_blobs(n_samples=200, centers=centers, cluster_std=1.0, random_state=0)
    k, curve = choose_k(X, 2, 8, n_init=2, max_iter=100, random_state=0)
    assert k == 4
    assert sorted(curve) == list(range(2, 9))
    assert curve[4] == max(curve.values())


def test_choose_k_clips_k_max_to_n_minus_one():
    X = np.array([[0.0], [1.0], [10.0], [11.0], [30.0]])
    k, curve = choose_k(X, 2, 12, n_init=1, max_iter=50, random_state=0)
    assert sorted(curve) == [2, 3, 4]
    assert k in curve


def test_choose_k_all_identical_points_gives_nan_curve():
    X = np.ones((6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k-means' distinct-clusters warning is handled inside
        k, curve = choose_k(X, 2, 3, n_init=1, max_iter=10, random_state=0)
    assert k == 2
    assert sorted(curve) == [2, 3]
    assert all(math.isnan(v) for v in curve.values())


def test_choose_k_too_few_samples():
    with pytest.raises(ValueError, match=r"at least 3 samples.*got 2"):
        choose_k(np.zeros((2, 3)), 2, 4, n_init=1, max_iter=10, random_state=0)
    with pytest.raises(ValueError, match="k_min=5"):
        choose_k(np.random.default_rng(0).normal(size=(4, 2)), 5, 8, n_init=1, max_iter=10, random_state=0)
    with pytest.raises(ValueError, match="k_min must be at least 2"):
        choose_k(np.zeros((10, 2)), 1, 4, n_init=1, max_iter=10, random_state=0)


# -------------------------------------------------------------------- metrics


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=40, centers=[[0.0, 0.0], [10.0, 10.0]], cluster_std=0.5, random_state=0)
    return X, y


def test_metrics_of_a_perfect_clustering():
    X, y = _two_blobs()
    labels = np.where(y == 0, "cat", "dog").astype(object)
    m = clustering_metrics(X, y, labels)
    assert set(m) == {"silhouette", "calinski_harabasz", "davies_bouldin", "nmi", "ari", "purity"}
    assert m["nmi"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0)
    assert m["purity"] == pytest.approx(1.0)
    assert m["silhouette"] > 0.8
    assert m["davies_bouldin"] < 0.2
    assert m["calinski_harabasz"] > 100


def test_metrics_without_labels_has_only_internal_scores():
    X, y = _two_blobs()
    assert set(clustering_metrics(X, y)) == {"silhouette", "calinski_harabasz", "davies_bouldin"}


def test_metrics_ignore_unlabelled_rows():
    X, y = _two_blobs()
    labels = np.where(y == 0, "cat", "dog").astype(object)
    labels[:5] = None
    labels[5:8] = float("nan")
    swapped = y.copy()
    swapped[:8] = 1 - swapped[:8]  # wrong assignments, but only on unlabelled rows
    m = clustering_metrics(X, swapped, labels)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["purity"] == 1.0


def test_metrics_purity_hand_computed():
    X = np.arange(12.0).reshape(6, 2)
    assignments = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array(["a", "a", "b", "b", "b", "b"], dtype=object)
    assert clustering_metrics(X, assignments, labels)["purity"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("case", ["one_cluster", "singletons", "one_point"])
def test_degenerate_metrics_are_nan(case):
    X, _y = _two_blobs()
    if case == "one_cluster":
        assignments = np.zeros(len(X), dtype=int)
    elif case == "singletons":
        assignments = np.arange(len(X))
    else:
        X, assignments = X[:1], np.zeros(1, dtype=int)
    m = clustering_metrics(X, assignments, np.array(["a"] * len(X), dtype=object))
    for key in ("silhouette", "calinski_harabasz", "davies_bouldin"):
        assert math.isnan(m[key])
    assert m["purity"] == 1.0


def test_metrics_with_no_labelled_rows_are_nan():
    X, y = _two_blobs()
    m = clustering_metrics(X, y, [None] * len(X))
    assert math.isnan(m["nmi"]) and math.isnan(m["ari"]) and math.isnan(m["purity"])
    assert not math.isnan(m["silhouette"])


def test_metrics_shape_mismatch():
    X, y = _two_blobs()
    with pytest.raises(ValueError, match="assignments must have shape"):
        clustering_metrics(X, y[:-1])
    with pytest.raises(ValueError, match="labels must have shape"):
        clustering_metrics(X, y, ["a"])
