"""cluster: k-means on the embeddings, with quality and label-agreement metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from gcmodels.clusterers import fit_clustering
from gcmodels.clustering import clustering_metrics
from gcmodels.config import ClusterConfig
from tasks.artifacts import MANIFEST, stage_file, stopwatch
from tasks.caching import content_key
from tasks.logs import stage_logger
from tasks.storage import RunStore


@task(name="cluster", task_run_name="cluster")
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
        found = fit_clustering(x, config)
        k = found.k
        labels = store.read_parquet(MANIFEST, ["image_id", "label", "status"])
        labels = labels[labels["status"] == "ok"].drop_duplicates("image_id").set_index("image_id")["label"]
        image_labels = labels.reindex(emb["image_id"]).to_numpy(dtype=object)
        has_labels = any(isinstance(lab, str) for lab in image_labels)
        metrics = clustering_metrics(found.features, found.assignments, image_labels if has_labels else None)
        rows = [("k", float(k))]
        rows += [(f"{name}_final", float(trace[-1])) for name, trace in found.traces.items() if trace]
        rows += [(name, float(value)) for name, value in metrics.items()]
        rows += [(f"{found.metadata.get('k_source', 'k')}_at_k={kk}", float(v)) for kk, v in sorted(found.k_curve.items())]
        distance = found.distance
        curve = found.k_curve
        key = content_key(embeddings, labels_key, config)
        names = {"clusters": stage_file("clusters", key), "cluster_metrics": stage_file("cluster_metrics", key)}
        store.write_parquet(
            names["clusters"],
            pd.DataFrame({"image_id": emb["image_id"], "cluster": found.assignments, "distance": distance}),
        )
        store.write_parquet(names["cluster_metrics"], pd.DataFrame(rows, columns=["metric", "value"]))
        log.info(
            "%s: k=%d%s; %s", config.method, k, f" (chosen by {config.k_criterion})" if curve else "",
            ", ".join(f"{m}={v:.3f}" for m, v in metrics.items()),
        )
    return {"k": k, "clustering": found.metadata, **{m: float(v) for m, v in metrics.items()}, **names, "seconds": clock["seconds"]}
