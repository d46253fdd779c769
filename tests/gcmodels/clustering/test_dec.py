"""Tests of gcmodels.clustering.dec: the Student's t soft assignments, the target distribution, the DEC
estimator contract, and DEC through the factory (CPU, tiny networks, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fresh_imports import MODULES, loaded
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from gcmodels.clustering.dec import DEC, soft_assignments, target_distribution
from gcmodels.clustering.fitting import fit_clustering, make_clusterer
from gcmodels.config import ClusterConfig

_TINY = dict(hidden=(8,), latent_dim=2, pretrain_epochs=3, epochs=3, batch_size=16, n_init=2)


@parametrize_with_checks([DEC(n_clusters=3, **_TINY)])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def test_soft_assignments_hand_computed():
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = soft_assignments(z, centers, alpha=1.0)
    # alpha = 1: q ~ 1 / (1 + d^2); row 0: (1, 1/2) -> (2/3, 1/3); row 1: (1/10, 1/5) -> (1/3, 2/3)
    np.testing.assert_allclose(q.numpy(), [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], rtol=1e-6)
    q3 = soft_assignments(z, centers, alpha=3.0)  # (1 + d^2/3)^-2
    row0 = np.array([1.0, (1 + 1 / 3) ** -2])
    np.testing.assert_allclose(q3[0].numpy(), row0 / row0.sum(), rtol=1e-6)


def test_target_distribution_hand_computed():
    q = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    f = q.sum(0)  # (1.4, 0.6)
    w = q**2 / f
    expected = w / w.sum(1, keepdim=True)
    np.testing.assert_allclose(target_distribution(q).numpy(), expected.numpy(), rtol=1e-6)
    # with balanced clusters p is q squared and renormalised: sharper
    balanced = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    np.testing.assert_allclose(target_distribution(balanced).numpy(), [[16 / 17, 1 / 17], [1 / 17, 16 / 17]], rtol=1e-6)


def test_dec_on_blobs_records_its_traces():
    X, y = make_blobs(n_samples=300, centers=4, n_features=6, cluster_std=1.0, random_state=0)
    dec = DEC(4, hidden=(32,), latent_dim=3, pretrain_epochs=30, epochs=15, batch_size=64, random_state=0).fit(X)
    assert adjusted_rand_score(y, dec.labels_) > 0.9
    assert len(dec.pretrain_loss_trace_) == 30 and dec.pretrain_loss_trace_[-1] < dec.pretrain_loss_trace_[0]
    assert 1 <= len(dec.kl_trace_) == dec.n_iter_ <= 15
    assert all(k >= 0 for k in dec.kl_trace_)
    assert dec.cluster_centers_.shape == (4, 3)
    np.testing.assert_array_equal(dec.predict(X), dec.labels_)
    proba = dec.predict_proba(X[:7])
    assert proba.shape == (7, 4) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert dec.embed(X[:7]).shape == (7, 3)


def test_dec_is_reproducible():
    X, _ = make_blobs(n_samples=80, centers=3, n_features=4, random_state=1)
    a = DEC(3, **_TINY, random_state=4).fit(X)
    b = DEC(3, **_TINY, random_state=4).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_dec_bad_parameters():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="hidden must be positive layer widths"):
        DEC(2, hidden=(0,)).fit(X)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        DEC(2, lr=0).fit(X)
    with pytest.raises(ValueError, match=r"n_clusters=11 is larger than the number of samples \(10\)"):
        DEC(11).fit(X)


def test_dec_through_the_factory():
    cfg = ClusterConfig(
        method="dec", k=3, dec_hidden=(16,), dec_latent_dim=2, dec_pretrain_epochs=5, dec_epochs=3, seed=2
    )
    est = make_clusterer(cfg, 100)
    assert isinstance(est, DEC)
    assert (est.n_clusters, est.hidden, est.latent_dim, est.pretrain_epochs, est.epochs, est.random_state) == (
        3,
        (16,),
        2,
        5,
        3,
        2,
    )
    X, _ = make_blobs(n_samples=90, centers=3, n_features=4, random_state=0)
    res = fit_clustering(X, cfg.model_copy(update={"k": None, "k_max": 5}))
    assert res.metadata["estimator"] == "DEC" and res.metadata["k_source"] == "silhouette"
    assert set(res.traces) == {"pretrain_loss", "kl", "delta_label"}


def test_new_model_modules_import_neither_prefect_nor_umap(fresh_imports):
    """The clustering / encoder modules stay Prefect-free; the optional umap-learn (slow to
    import) loads only when a UMAP reduction is asked for."""
    modules = [
        "gcmodels.embedding.autoencoders",
        "gcmodels.clustering.fitting",
        "gcmodels.clustering.collection",
        "gcmodels.clustering.dec",
        "gcmodels.embedding.encoders",
    ]
    # fresh_imports: a fresh Python that imported these among all the import-isolation tests' modules
    assert set(modules) <= set(MODULES), "name them in MODULES of tests/support/fresh_imports.py"
    for package in ("prefect", "umap"):
        assert not loaded(fresh_imports, package), fresh_imports["first_imported_by"]
