"""cluster: k-means on the embeddings, with quality and label-agreement metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from gcmodels.clustering import KMeans, choose_k, clustering_metrics
from gcmodels.config import ClusterConfig
from tasks.artifacts import MANIFEST, stage_file, stopwatch
from tasks.caching import content_key
from tasks.logs import stage_logger
from tasks.storage import RunStore


@task(name="cluster")
def cluster(
    out: str, embeddings: str, labels_key: str, config: ClusterConfig, storage_options: dict | None = None
) -> dict:
    """Cluster the embeddings; write the assignments and metrics under content-addressed names
    (published as `clusters.parquet` and `cluster_metrics.parquet`). `labels_key` fingerprints
    the labels the agreement metrics (NMI, ARI) are computed against."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        emb = store.read_parquet(embeddings)
        x = np.stack(emb["embedding"].to_numpy()).astype(np.float64)
        n = len(x)
        curve: dict[int, float] = {}
        if config.k is not None:
            k = min(config.k, n)
            if k < config.k:
                log.warning("cluster.k=%d but only %d images: using k=%d", config.k, n, k)
        elif n >= 3:
            k, curve = choose_k(
                x, config.k_min, min(config.k_max, n - 1), n_init=config.n_init, max_iter=config.max_iter,
                random_state=config.seed,
            )
        else:
            k = 1
            log.warning("only %d image(s): one cluster, no choice of k", n)
        km = KMeans(n_clusters=k, n_init=config.n_init, max_iter=config.max_iter, random_state=config.seed).fit(x)
        distance = km.transform(x)[np.arange(n), km.labels_]
        labels = store.read_parquet(MANIFEST, ["image_id", "label", "status"])
        labels = labels[labels["status"] == "ok"].drop_duplicates("image_id").set_index("image_id")["label"]
        image_labels = labels.reindex(emb["image_id"]).to_numpy(dtype=object)
        has_labels = any(lab is not None and lab == lab for lab in image_labels)
        metrics = clustering_metrics(x, km.labels_, image_labels if has_labels else None)
        rows = [("k", float(k)), ("inertia", float(km.inertia_)), ("iterations", float(km.n_iter_))]
        rows += [(name, float(value)) for name, value in metrics.items()]
        rows += [(f"silhouette_at_k={kk}", float(v)) for kk, v in sorted(curve.items())]
        key = content_key(embeddings, labels_key, config)
        names = {"clusters": stage_file("clusters", key), "cluster_metrics": stage_file("cluster_metrics", key)}
        store.write_parquet(
            names["clusters"],
            pd.DataFrame({"image_id": emb["image_id"], "cluster": km.labels_.astype(np.int64), "distance": distance}),
        )
        store.write_parquet(names["cluster_metrics"], pd.DataFrame(rows, columns=["metric", "value"]))
        log.info(
            "k-means: k=%d%s; %s", k, " (chosen by silhouette)" if curve else "",
            ", ".join(f"{m}={v:.3f}" for m, v in metrics.items()),
        )
    return {"k": k, **{m: float(v) for m, v in metrics.items()}, **names, "seconds": clock["seconds"]}
