"""Conditioning labels from clusters, cluster names, and the 2-D collection map (CPU, tiny data)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from gcmodels.clustering.collection import cluster_name, cluster_names, conditioning_labels, project_2d
from gcmodels.config import ConfigError, Settings


def test_cluster_names_sort_like_the_ids_and_noise_has_none():
    assert cluster_names([0, 2, -1, 1]) == ["cluster-00", "cluster-02", None, "cluster-01"]
    names = cluster_names(np.arange(120))
    assert names[7] == "cluster-007" and names == sorted(names)
    assert cluster_name(3, 4) == "cluster-03"
    with pytest.raises(ValueError, match="noise"):
        cluster_name(-1, 3)
    with pytest.raises(ValueError, match="integer cluster ids"):
        cluster_names([0.5, 1.0])


def test_auto_uses_given_labels_when_any_image_has_one():
    c = conditioning_labels("auto", ["a", None, "b", float("nan")], [0, 0, 1, -1])
    assert c.source == "labels" and c.labels == ["a", None, "b", None]
    assert c.decision == {
        "mode": "auto",
        "source": "labels",
        "reason": "labels were given",
        "labels": {"a": 1, "b": 1},
        "unlabelled": 2,
        "noise": 0,
        "given_labelled": 2,
    }


def test_auto_without_labels_conditions_on_clusters_and_leaves_noise_unlabelled():
    c = conditioning_labels("auto", [None] * 5, [1, 0, -1, 1, 0])
    assert c.source == "clusters"
    assert c.labels == ["cluster-01", "cluster-00", None, "cluster-01", "cluster-00"]
    assert c.decision["labels"] == {"cluster-00": 2, "cluster-01": 2}
    assert c.decision["noise"] == 1 and c.decision["unlabelled"] == 1 and c.decision["reason"] == "no image has a label"


def test_clusters_mode_overrides_given_labels():
    c = conditioning_labels("clusters", ["a", "a", "b"], [0, 1, 1])
    assert c.source == "clusters" and c.labels == ["cluster-00", "cluster-01", "cluster-01"]
    assert c.decision["given_labelled"] == 3


def test_clear_errors():
    with pytest.raises(ValueError, match="no image has a label"):
        conditioning_labels("given", [None, None], [0, 1])
    with pytest.raises(ValueError, match="every image as noise"):
        conditioning_labels("auto", [None, None], [-1, -1])
    with pytest.raises(ValueError, match=r"data.labels must be one of"):
        conditioning_labels("maybe", [None], [0])
    with pytest.raises(ValueError, match="2 labels for 3"):
        conditioning_labels("auto", [None, None], [0, 1, 1])


def test_settings_refuse_diffusion_features_with_cluster_labels():
    with pytest.raises(ConfigError, match="circular"):
        Settings.from_dict({"embed": {"method": "diffusion"}, "data": {"labels": "clusters"}})
    with pytest.raises(ConfigError, match=r"data.labels"):
        Settings.from_dict({"data": {"labels": "pseudo"}})
    assert Settings().data.labels == "auto" and Settings().report.map_method == "pca"


def test_pca_map_is_the_top_two_principal_components():
    X, _ = make_blobs(n_samples=60, n_features=5, centers=3, random_state=0)
    xy = project_2d(X, "pca")
    assert xy.shape == (60, 2) and xy.dtype == np.float32
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ vt[:2].T
    for j in range(2):  # equal up to the sign of each axis
        assert min(np.abs(xy[:, j] - ref[:, j]).max(), np.abs(xy[:, j] + ref[:, j]).max()) < 1e-4


def test_tsne_map_keeps_separated_blobs_apart():
    X, y = make_blobs(n_samples=60, n_features=8, centers=3, cluster_std=0.5, random_state=1)
    xy = project_2d(X, "tsne", random_state=0)
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    # every point's nearest neighbour on the map is in its own blob
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).all()


def test_map_degenerate_inputs_and_errors():
    assert project_2d(np.ones((1, 3)), "tsne").tolist() == [[0.0, 0.0]]
    line = project_2d(np.arange(5.0)[:, None], "pca")
    assert line.shape == (5, 2) and (line[:, 1] == 0).all() and np.ptp(line[:, 0]) > 0
    assert project_2d(np.random.default_rng(0).normal(size=(3, 4)), "tsne").shape == (3, 2)  # too few for t-SNE: PCA
    with pytest.raises(ValueError, match="map_method"):
        project_2d(np.ones((4, 2)), "mds")
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(ValueError, match="umap-learn"):
            project_2d(np.ones((10, 2)), "umap")
