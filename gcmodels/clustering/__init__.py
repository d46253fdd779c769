"""Clustering the collection: the other half of gcmine (summaries and pseudo-labels).

- `estimators`: scikit-learn's KMeans / MiniBatchKMeans / GaussianMixture, plus what it lacks
  (`TracedKMeans`'s objective per iteration, `Agglomerative`'s merge tree), the choice of k and
  the quality metrics;
- `fitting`: the estimator a `ClusterConfig` names, and the whole cluster step on an array;
- `dec`: deep embedded clustering (kept: no library equivalent that runs offline);
- `collection`: conditioning labels from clusters, and the 2-D map of the embeddings.
"""

from gcmodels.clustering.estimators import Agglomerative, GMM_TOL, GaussianMixture, KMeans, MiniBatchKMeans, TracedKMeans, choose_k, clustering_metrics, contingency, lloyd_trace
from gcmodels.clustering.fitting import AGGLOMERATIVE_MAX_SAMPLES, CLUSTERERS, ClusteringResult, centroid_distances, estimate_eps, fit_clustering, make_clusterer, make_reducer
from gcmodels.clustering.dec import DEC, soft_assignments, target_distribution
from gcmodels.clustering.collection import Conditioning, LABEL_MODES, MAP_METHODS, cluster_name, cluster_names, conditioning_labels, project_2d

__all__ = [
    "AGGLOMERATIVE_MAX_SAMPLES",
    "Agglomerative",
    "CLUSTERERS",
    "ClusteringResult",
    "Conditioning",
    "DEC",
    "GMM_TOL",
    "GaussianMixture",
    "KMeans",
    "LABEL_MODES",
    "MAP_METHODS",
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
