"""cluster: the embeddings clustered, with quality and label-agreement metrics; the choice of the
conditioning labels (given, or the clusters as pseudo-labels); the 2-D map of the collection."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from gcmine.tasks.infra.artifacts import MANIFEST, live_rows, read_embeddings, stage_file, stopwatch
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore
from gcmodels.clustering.collection import conditioning_labels, project_2d
from gcmodels.clustering.estimators import clustering_metrics, contingency
from gcmodels.clustering.fitting import fit_clustering
from gcmodels.config import ClusterConfig, ConfigError, RuntimeConfig
from gcmodels.labels import count_labels
from gcmodels.runtime import resolve_device

#: t-SNE / UMAP above this many images would take hours on a CPU: the map falls back to PCA
MAP_NONLINEAR_MAX = 50_000
TRACE_COLUMNS = ["trace", "iteration", "value"]
CONTINGENCY_COLUMNS = ["label", "cluster", "count"]
LINKAGE_COLUMNS = ["child_a", "child_b", "distance", "size"]


def _manifest_labels(store: RunStore, image_ids: pd.Series) -> np.ndarray:
    """The manifest's label (str or None) of each of `image_ids`."""
    labels = live_rows(store.read_parquet(MANIFEST, ["image_id", "label", "status"]))["label"]
    return np.asarray([lab if isinstance(lab, str) else None for lab in labels.reindex(image_ids)], dtype=object)


def _traces_table(traces: dict[str, list[float]]) -> pd.DataFrame:
    rows = [(name, i, float(v)) for name, trace in traces.items() for i, v in enumerate(trace)]
    return pd.DataFrame(rows, columns=TRACE_COLUMNS).astype({"iteration": np.int64, "value": np.float64})


def _linkage_table(estimator) -> pd.DataFrame:
    z = getattr(estimator, "linkage_matrix_", None)
    if z is None:
        z = np.zeros((0, 4))
    return pd.DataFrame(
        {
            "child_a": z[:, 0].astype(np.int64),
            "child_b": z[:, 1].astype(np.int64),
            "distance": z[:, 2].astype(np.float64),
            "size": z[:, 3].astype(np.int64),
        }
    )


@task(name="cluster", task_run_name="cluster")
def cluster(
    out: str,
    embeddings: str,
    labels_key: str,
    config: ClusterConfig,
    runtime: RuntimeConfig | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Cluster the embeddings; write, under content-addressed names (published under the names
    in brackets): the assignments [`clusters.parquet`; cluster -1 = noise, with NaN distance],
    the metrics [`cluster_metrics.parquet`], the objective per iteration
    [`cluster_traces.parquet`], the label x cluster counts [`cluster_contingency.parquet`] and
    the agglomerative merge tree [`cluster_linkage.parquet`, empty for other methods].
    `labels_key` fingerprints the labels the agreement metrics (NMI, ARI) are computed against;
    DEC trains on `runtime.device`."""
    log = stage_logger()
    device = str(resolve_device(runtime.device)) if runtime is not None else "cpu"
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        image_ids, x = read_embeddings(store, embeddings)
        if len(x) == 0:
            raise ValueError(f"{embeddings}: no embedding to cluster (no usable image)")
        if config.method == "hdbscan" and len(x) < max(2, config.min_samples):
            raise InputError(
                f"cluster.method=hdbscan needs at least cluster.min_samples = {config.min_samples} (and 2) usable "
                f"images, this run has {len(x)}: lower cluster.min_samples or use cluster.method=kmeans"
            )
        found = fit_clustering(x, config, device=device)
        k = found.k
        if config.k is not None and k < config.k:
            # Documented fallback: k is clipped to the number of usable images.
            log.warning("cluster.k = %d but only %d usable image(s): clustered into k = %d", config.k, len(x), k)
        image_labels = _manifest_labels(store, image_ids)
        has_labels = any(isinstance(lab, str) for lab in image_labels)
        metrics = clustering_metrics(
            found.features,
            found.assignments,
            image_labels if has_labels else None,
            sample_size=config.silhouette_sample,
            random_state=config.seed,
        )
        rows = [("k", float(k))]
        rows += [(f"{name}_final", float(value)) for name, value in found.finals.items()]
        rows += [(name, float(value)) for name, value in metrics.items()]
        rows += [
            (f"{found.metadata.get('k_source', 'k')}_at_k={kk}", float(v)) for kk, v in sorted(found.k_curve.items())
        ]
        curve = found.k_curve
        key = content_key(embeddings, labels_key, config)
        roles = ("clusters", "cluster_metrics", "cluster_traces", "cluster_contingency", "cluster_linkage")
        names = {role: stage_file(role, key) for role in roles}
        store.write_parquet(
            names["clusters"],
            pd.DataFrame({"image_id": image_ids, "cluster": found.assignments, "distance": found.distance}),
        )
        store.write_parquet(names["cluster_metrics"], pd.DataFrame(rows, columns=["metric", "value"]))
        store.write_parquet(names["cluster_traces"], _traces_table(found.traces))
        table = contingency(image_labels, found.assignments) if has_labels else pd.DataFrame()
        long = (
            table.reset_index().melt(id_vars="label", var_name="cluster", value_name="count")
            if not table.empty
            else pd.DataFrame(columns=CONTINGENCY_COLUMNS)
        )
        store.write_parquet(
            names["cluster_contingency"],
            long[CONTINGENCY_COLUMNS].astype({"label": str, "cluster": np.int64, "count": np.int64}),
        )
        store.write_parquet(names["cluster_linkage"], _linkage_table(found.estimator))
        log.info(
            "%s: k=%d%s; %s",
            config.method,
            k,
            f" (chosen by {config.k_criterion})" if curve else "",
            ", ".join(f"{m}={v:.3f}" for m, v in metrics.items()),
        )
    return {
        "k": k,
        "clustering": found.metadata,
        "device": device,
        **{m: float(v) for m, v in metrics.items()},
        **names,
        "seconds": clock["seconds"],
    }


@task(name="condition", task_run_name="condition")
def condition(out: str, clusters: str, labels_key: str, mode: str, storage_options: dict | None = None) -> dict:
    """Decide the labels that condition fine-tuning and typicality (`mode`, data.labels: given,
    clusters or auto) and write them as a conditioning table (image_id, label, cluster, source;
    published as `conditioning.parquet`; label null = unlabelled, e.g. noise). Cheap: not cached."""
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        table = store.read_parquet(clusters, ["image_id", "cluster"])
        given = _manifest_labels(store, table["image_id"])
        try:
            chosen = conditioning_labels(mode, given, table["cluster"].to_numpy())
        except ValueError as err:  # a settings / data mismatch the user fixes: reported as such by the CLI
            raise ConfigError(str(err)) from None
        name = stage_file("conditioning", content_key(clusters, labels_key, mode))
        store.write_parquet(
            name,
            pd.DataFrame(
                {
                    "image_id": table["image_id"],
                    "label": pd.Series(chosen.labels, dtype=object),
                    "cluster": table["cluster"].astype(np.int64),
                    "source": chosen.source,
                }
            ),
        )
        d = chosen.decision
        stage_logger().info(
            "conditioning on %s (%s): %s, %d image(s) unlabelled%s",
            d["source"],
            d["reason"],
            count_labels(d["labels"]),
            d["unlabelled"],
            f" ({d['noise']} noise)" if d["noise"] else "",
        )
    return {"conditioning": name, **d, "seconds": clock["seconds"]}


@task(name="collection-map", task_run_name="collection-map")
def collection_map(
    out: str, embeddings: str, clusters: str, method: str, seed: int, storage_options: dict | None = None
) -> dict:
    """2-D coordinates of every embedded image (`method`: pca, tsne, umap; t-SNE / UMAP fall
    back to PCA above `MAP_NONLINEAR_MAX` images), with its cluster: written under a
    content-addressed name, published as `collection_map.parquet` (image_id, x, y, cluster)."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        image_ids, x = read_embeddings(store, embeddings)
        used = method
        if method != "pca" and len(x) > MAP_NONLINEAR_MAX:
            used = "pca"
            log.warning("report.map_method=%s on %d images would take too long: the map uses pca", method, len(x))
        xy = project_2d(x, used, random_state=seed)
        cl = (
            store.read_parquet(clusters, ["image_id", "cluster"])
            .drop_duplicates("image_id")
            .set_index("image_id")["cluster"]
        )
        name = stage_file("collection_map", content_key(embeddings, clusters, method, seed))
        store.write_parquet(
            name,
            pd.DataFrame(
                {
                    "image_id": image_ids,
                    "x": xy[:, 0],
                    "y": xy[:, 1],
                    "cluster": cl.reindex(image_ids).fillna(-1).astype(np.int64).to_numpy(),
                }
            ),
        )
    return {"collection_map": name, "method": used, "images": int(len(x)), "seconds": clock["seconds"]}
