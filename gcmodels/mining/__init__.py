"""What is mined from a fine-tuned model: typicality maps and everything read from them.

- `typicality`: the estimator T(x|c) = E_{t,eps}[L_t(x,eps,null) - L_t(x,eps,c)] per pixel;
- `adaptive`: adaptive draws (spend the (t, eps) draws where a label's top patches are decided);
- `patches`: pooling maps into patches, the greedy non-overlapping top patches, box mapping;
- `elements`: visual elements (clusters of a label's most typical patches), ranked;
- `cotypicality`: cotypicality tables, typicality as a classifier, the fine-tuning holdout;
- `translation`: an image as it would look under another label, and what changes;
- `evaluation`: maps and patches against ground-truth boxes (AUC-PR, AP, pointing game);
- `frechet`: how close a model's samples are to the real images (Frechet distance).
"""

from gcmodels.mining.adaptive import (
    AdaptiveResult,
    AdaptiveRule,
    adaptive_maps,
    draw_order,
    half_width,
    round_sizes,
    standard_error,
)
from gcmodels.mining.cotypicality import (
    classification_accuracy,
    confused_labels,
    confusion_matrix,
    cotypicality_frame,
    label_matrix,
    predict_labels,
    stratified_split,
)
from gcmodels.mining.elements import Elements, label_specificity, mine_elements
from gcmodels.mining.evaluation import (
    PAPER_THRESHOLDS,
    average_precision,
    boxes_mask,
    localisation_report,
    localisation_scores,
    paper_aucpr,
    pointing_hit,
)
from gcmodels.mining.frechet import (
    ALL,
    FID_FEATURES,
    INCEPTION_DIM,
    frechet_distance,
    frechet_distance_between,
    gaussian_stats,
    inception_features,
    nearest_neighbours,
    sample_quality,
)
from gcmodels.mining.patches import box_mean, pool_map, scale_boxes, top_patches, typical_weights
from gcmodels.mining.translation import (
    ConsistentChanges,
    Translator,
    change_maps,
    consistent_changes,
    patch_crops,
    to_uint8,
)
from gcmodels.mining.typicality import NoisePredictor, TypicalityEstimator, typicality_from_losses

__all__ = [
    "ALL",
    "FID_FEATURES",
    "INCEPTION_DIM",
    "PAPER_THRESHOLDS",
    "AdaptiveResult",
    "AdaptiveRule",
    "ConsistentChanges",
    "Elements",
    "NoisePredictor",
    "Translator",
    "TypicalityEstimator",
    "adaptive_maps",
    "average_precision",
    "box_mean",
    "boxes_mask",
    "change_maps",
    "classification_accuracy",
    "confused_labels",
    "confusion_matrix",
    "consistent_changes",
    "cotypicality_frame",
    "draw_order",
    "frechet_distance",
    "frechet_distance_between",
    "gaussian_stats",
    "half_width",
    "inception_features",
    "label_matrix",
    "label_specificity",
    "localisation_report",
    "localisation_scores",
    "mine_elements",
    "nearest_neighbours",
    "paper_aucpr",
    "patch_crops",
    "pointing_hit",
    "pool_map",
    "predict_labels",
    "round_sizes",
    "sample_quality",
    "scale_boxes",
    "standard_error",
    "stratified_split",
    "to_uint8",
    "top_patches",
    "typical_weights",
    "typicality_from_losses",
]
