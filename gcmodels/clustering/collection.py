"""The collection at a glance: conditioning labels from clusters, and a 2-D map of the embeddings.

- `cluster_names(assignments)`: readable names of discovered groups (``cluster-03``), None for
  noise (-1).
- `conditioning_labels(mode, labels, assignments)`: which labels condition fine-tuning and
  typicality (the given ones, or the clusters as pseudo-labels), and the decision, recorded in
  the artifacts and the report.
- `project_2d(X, method, random_state)`: (n, 2) coordinates of the embeddings for the map
  (PCA, t-SNE, or UMAP when umap-learn is installed).

Pure functions on arrays; no Prefect, no paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import check_array

__all__ = [
    "LABEL_MODES",
    "MAP_METHODS",
    "Conditioning",
    "cluster_name",
    "cluster_names",
    "conditioning_labels",
    "project_2d",
]

LABEL_MODES = ("auto", "given", "clusters")
MAP_METHODS = ("pca", "tsne", "umap")
CLUSTER_PREFIX = "cluster-"


def cluster_name(cluster: int, k: int) -> str:
    """``cluster-03``: the prefix, then the id zero-padded to the width of the largest id
    (at least 2 digits), so that names sort like the ids."""
    if cluster < 0:
        raise ValueError(f"cluster_name: noise (cluster {cluster}) has no name")
    width = max(2, len(str(max(int(k) - 1, 0))))
    return f"{CLUSTER_PREFIX}{int(cluster):0{width}d}"


def cluster_names(assignments: Any) -> list[str | None]:
    """One name per row (`cluster_name`), None for noise (-1). assignments: (n,) int."""
    a = np.asarray(assignments)
    if a.ndim != 1:
        raise ValueError(f"cluster_names: assignments must be 1-D, got shape {a.shape}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < -1):
        raise ValueError("cluster_names: assignments must be integer cluster ids >= 0, or -1 for noise")
    k = int(a.max()) + 1 if a.size else 0
    return [None if c < 0 else cluster_name(int(c), k) for c in a.tolist()]


@dataclass
class Conditioning:
    """labels: (n,) the conditioning label of each row (None = unlabelled: trains the null
    branch only, not scored). source: "labels" or "clusters". decision: JSON-ready record of
    the choice (mode, source, reason, counts)."""

    labels: list[str | None]
    source: str
    decision: dict[str, Any] = field(default_factory=dict)


def _is_label(value: Any) -> bool:
    return isinstance(value, str)


def conditioning_labels(mode: str, labels: Any, assignments: Any) -> Conditioning:
    """Choose the labels that condition the diffusion model.

    mode: "given" (the given labels; at least one image must have one), "clusters" (the
    cluster names of `cluster_names`, whatever labels were given) or "auto" ("given" when any
    image is labelled, else "clusters"). labels: (n,) str or None/NaN per row; assignments:
    (n,) int cluster ids, -1 = noise. Noise rows get no label (unlabelled). Raises ValueError
    when the chosen source labels no row (no label given, or every row is noise).
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"data.labels must be one of {LABEL_MODES}, got {mode!r}")
    labels = list(labels)
    a = np.asarray(assignments)
    if len(labels) != a.shape[0]:
        raise ValueError(f"conditioning_labels: {len(labels)} labels for {a.shape[0]} cluster assignments")
    given = [lab if _is_label(lab) else None for lab in labels]
    n_given = sum(lab is not None for lab in given)
    if mode == "given" or (mode == "auto" and n_given):
        if not n_given:
            raise ValueError(
                "data.labels='given' but no image has a label: give LABELS or a folder per label, or set "
                "data.labels to 'clusters' (or 'auto') to mine the discovered clusters"
            )
        reason = "labels were given" if mode == "auto" else "data.labels='given'"
        chosen, source = given, "labels"
    else:
        chosen, source = cluster_names(a), "clusters"
        reason = "no image has a label" if mode == "auto" else "data.labels='clusters'"
        if all(lab is None for lab in chosen):
            raise ValueError(
                "mining the clusters, but the clustering marked every image as noise (-1): no group to "
                "condition on; loosen cluster.eps / cluster.min_samples or use a method that takes k"
            )
    counts = pd.Series([lab for lab in chosen if lab is not None], dtype=object).value_counts().sort_index()
    decision = {
        "mode": mode,
        "source": source,
        "reason": reason,
        "labels": {str(k): int(v) for k, v in counts.items()},
        "unlabelled": int(sum(lab is None for lab in chosen)),
        "noise": int((a == -1).sum()) if source == "clusters" else 0,
        "given_labelled": int(n_given),
    }
    return Conditioning(labels=chosen, source=source, decision=decision)


def project_2d(X: Any, method: str = "pca", *, random_state: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(n, 2) float32 map coordinates of the rows of X (n, d).

    "pca": the top two principal components (exact, one pass); "tsne": scikit-learn's
    Barnes-Hut t-SNE initialised from PCA, perplexity clipped to (n - 1) / 3; "umap": umap-learn
    (optional dependency; a clear error names it when missing). Fewer than 3 rows, or d = 1,
    are placed by PCA (or on a line); missing dimensions are zero.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"report.map_method must be one of {MAP_METHODS}, got {method!r}")
    X = check_array(X, dtype=[np.float32, np.float64], ensure_min_samples=1)
    n, d = X.shape
    out = np.zeros((n, 2), dtype=np.float32)
    if n == 1:
        return out
    if method == "tsne" and n >= 4:
        from sklearn.manifold import TSNE

        perp = float(min(perplexity, max(1.0, (n - 1) / 3.0 - 1e-6)))
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=random_state).fit_transform(
            X.astype(np.float32, copy=False)
        )
        return np.asarray(emb, dtype=np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("report.map_method='umap' needs the umap-learn package (pip install umap-learn)") from None
    if method == "umap" and n >= 4:
        emb = umap.UMAP(n_components=2, random_state=random_state, n_neighbors=min(15, n - 1)).fit_transform(X)
        return np.asarray(emb, dtype=np.float32)
    from sklearn.decomposition import PCA

    m = min(2, d, n)
    out[:, :m] = PCA(
        n_components=m, svd_solver="covariance_eigh" if n > d else "full", random_state=random_state
    ).fit_transform(X)
    return out
