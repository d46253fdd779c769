"""The cluster-stage tasks outside a flow (`task.fn`): float32 embeddings straight from Arrow,
the traces / contingency / linkage tables, the conditioning decision and the collection map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from gcmine.tasks.cluster import cluster, collection_map, condition
from gcmine.tasks.infra.artifacts import MANIFEST, read_embeddings
from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import ClusterConfig, RuntimeConfig


def _store(tmp_path, n_per=8, labels=True, dim=3) -> tuple[RunStore, np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=3 * n_per, n_features=dim, centers=3, cluster_std=0.3, random_state=0)
    X = X.astype(np.float32)
    ids = [f"img{i:03d}" for i in range(len(X))]
    store = RunStore(str(tmp_path / "out"))
    lab = [f"class {c}" if labels else None for c in y]
    lab[0] = None  # one unlabelled image
    store.write_parquet(MANIFEST, pd.DataFrame({"image_id": ids, "label": lab, "status": "ok"}))
    store.write_parquet("stages/embeddings-x.parquet", pd.DataFrame({"image_id": ids, "embedding": list(X)}))
    return store, X, y


def test_read_embeddings_is_float32_from_the_arrow_buffer(tmp_path):
    store, X, _ = _store(tmp_path)
    ids, got = read_embeddings(store, "stages/embeddings-x.parquet")
    assert got.dtype == np.float32 and got.shape == X.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, X)
    assert list(ids[:2]) == ["img000", "img001"]
    ids5, got5 = read_embeddings(store, "stages/embeddings-x.parquet", batch_rows=5)  # several batches
    np.testing.assert_array_equal(got5, X)
    assert list(ids5) == list(ids)
    store.write_parquet("bad.parquet", pd.DataFrame({"image_id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}))
    with pytest.raises(ValueError, match=r"bad\.parquet: embeddings have different"):
        read_embeddings(store, "bad.parquet")
    # ragged across batches
    store.write_parquet(
        "bad2.parquet", pd.DataFrame({"image_id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0, 4.0, 5.0]]})
    )
    with pytest.raises(ValueError, match=r"bad2\.parquet"):
        read_embeddings(store, "bad2.parquet", batch_rows=1)


def test_agglomerative_writes_its_merge_tree_and_the_contingency_table(tmp_path):
    store, X, _y = _store(tmp_path)
    result = cluster.fn(
        str(tmp_path / "out"), "stages/embeddings-x.parquet", "k", ClusterConfig(method="agglomerative", k=3)
    )
    link = store.read_parquet(result["cluster_linkage"])
    n = len(X)
    assert list(link.columns) == ["child_a", "child_b", "distance", "size"] and len(link) == n - 1
    assert link["size"].iloc[-1] == n and (link["child_a"] < 2 * n - 1).all()
    ct = store.read_parquet(result["cluster_contingency"])
    assert list(ct.columns) == ["label", "cluster", "count"]
    assert ct["count"].sum() == n - 1  # the unlabelled image is not counted
    # separated blobs: each label sits in one cluster
    assert (ct[ct["count"] > 0].groupby("label")["cluster"].nunique() == 1).all()
    metrics = store.read_parquet(result["cluster_metrics"]).set_index("metric")["value"]
    assert metrics["nmi"] == pytest.approx(1.0) and metrics["purity"] == pytest.approx(1.0)
    assert store.read_parquet(result["cluster_traces"]).empty  # agglomerative has no iterations


def test_gmm_trace_is_recorded_per_iteration_and_dec_runs_on_the_runtime_device(tmp_path):
    store, _, _ = _store(tmp_path)
    out = str(tmp_path / "out")
    result = cluster.fn(
        out, "stages/embeddings-x.parquet", "k", ClusterConfig(method="gmm", k=3, n_init=1), RuntimeConfig(device="cpu")
    )
    traces = store.read_parquet(result["cluster_traces"])
    ll = traces[traces["trace"] == "log_likelihood"].sort_values("iteration")
    assert list(ll["iteration"]) == list(range(len(ll))) and len(ll) >= 2
    assert (np.diff(ll["value"].to_numpy()) >= -1e-9).all()  # EM never decreases the likelihood
    dec = ClusterConfig(
        method="dec", k=3, n_init=1, dec_hidden=(8,), dec_latent_dim=2, dec_pretrain_epochs=2, dec_epochs=2
    )
    result = cluster.fn(out, "stages/embeddings-x.parquet", "k", dec, RuntimeConfig(device="cpu"))
    assert result["device"] == "cpu" and result["clustering"]["params"]["device"] == "cpu"


def test_condition_and_map_tasks(tmp_path):
    store, _X, _ = _store(tmp_path, labels=False)
    out = str(tmp_path / "out")
    result = cluster.fn(out, "stages/embeddings-x.parquet", "k", ClusterConfig(k=3))
    assert store.read_parquet(result["cluster_contingency"]).empty
    decided = condition.fn(out, result["clusters"], "k", "auto")
    assert decided["source"] == "clusters" and sorted(decided["labels"]) == ["cluster-00", "cluster-01", "cluster-02"]
    table = store.read_parquet(decided["conditioning"])
    assert list(table.columns) == ["image_id", "label", "cluster", "source"]
    assert (table["label"] == table["cluster"].map(lambda c: f"cluster-{c:02d}")).all()
    with pytest.raises(ValueError, match="no image has a label"):
        condition.fn(out, result["clusters"], "k", "given")
    mapped = collection_map.fn(out, "stages/embeddings-x.parquet", result["clusters"], "pca", 0)
    points = store.read_parquet(mapped["collection_map"])
    assert mapped["method"] == "pca" and list(points.columns) == ["image_id", "x", "y", "cluster"]
    assert (points["cluster"].to_numpy() == store.read_parquet(result["clusters"])["cluster"].to_numpy()).all()
