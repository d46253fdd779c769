"""Clustering the collection: the other half of gcmine (summaries and pseudo-labels).

- `estimators`: scikit-learn's KMeans / MiniBatchKMeans / GaussianMixture, plus what it lacks
  (`TracedKMeans`'s objective per iteration, `Agglomerative`'s merge tree), the choice of k and
  the quality metrics;
- `fitting`: the estimator a `ClusterConfig` names, and the whole cluster step on an array;
- `dec`: deep embedded clustering (kept: no library equivalent that runs offline);
- `collection`: conditioning labels from clusters, and the 2-D map of the embeddings.
"""

from gcmodels.clustering.collection import (
    LABEL_MODES,
    MAP_METHODS,
    Conditioning,
    cluster_name,
    cluster_names,
    conditioning_labels,
    project_2d,
)
from gcmodels.clustering.dec import DEC, soft_assignments, target_distribution
from gcmodels.clustering.estimators import (
    GMM_TOL,
    Agglomerative,
    GaussianMixture,
    KMeans,
    MiniBatchKMeans,
    TracedKMeans,
    choose_k,
    clustering_metrics,
    contingency,
    lloyd_trace,
)
from gcmodels.clustering.fitting import (
    AGGLOMERATIVE_MAX_SAMPLES,
    CLUSTERERS,
    ClusteringResult,
    centroid_distances,
    estimate_eps,
    fit_clustering,
    make_clusterer,
    make_reducer,
)

__all__ = [
    "AGGLOMERATIVE_MAX_SAMPLES",
    "CLUSTERERS",
    "DEC",
    "GMM_TOL",
    "LABEL_MODES",
    "MAP_METHODS",
    "Agglomerative",
    "ClusteringResult",
    "Conditioning",
    "GaussianMixture",
    "KMeans",
    "MiniBatchKMeans",
    "TracedKMeans",
    "centroid_distances",
    "choose_k",
    "cluster_name",
    "cluster_names",
    "clustering_metrics",
    "conditioning_labels",
    "contingency",
    "estimate_eps",
    "fit_clustering",
    "lloyd_trace",
    "make_clusterer",
    "make_reducer",
    "project_2d",
    "soft_assignments",
    "target_distribution",
]
