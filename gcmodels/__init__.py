"""gcmine's models: everything that computes, free of Prefect and of file paths.

Subpackages, by role:

- `diffusion`: the conditional diffusion models behind one interface (`ConditionalDiffusion`): the
  embedded pixel model and the checkpoint families (SD 1.x/2.x, SDXL, SD3/3.5, DiT), the trainer
  (label dropout gives the null model), and sampling;
- `mining`: typicality maps and what is read from them (patches, elements, cotypicality,
  translation, evaluation against boxes, adaptive draws, the Frechet distance of samples);
- `clustering`: k-means / GMM / DBSCAN / agglomerative / DEC on the embeddings, the choice of k,
  conditioning labels from clusters, the collection map;
- `embedding`: one vector per image (PCA, autoencoders, CLIP, diffusion features);
- `data`: decoding untrusted images, working sizes, the synthetic demo sets;
- `baselines`: the discriminative patch-mining baseline (Doersch et al. 2012).

Beside them: `config` (the settings, one pydantic model per component), `runtime` (torch device
and threads), `prompts` (the prompt template) and `labels` (label sets of multi-label images); the
last two importable without torch.

Every public name of a subpackage is importable from it (``from gcmodels.mining import
TypicalityEstimator``) and, loaded on first use, from here (``from gcmodels import Settings``):
importing `gcmodels` alone loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AGGLOMERATIVE_MAX_SAMPLES": "gcmodels.clustering",
    "ALL": "gcmodels.mining",
    "AdaptiveResult": "gcmodels.mining",
    "AdaptiveRule": "gcmodels.mining",
    "AutoencoderResult": "gcmodels.diffusion",
    "Agglomerative": "gcmodels.clustering",
    "BASE_MODEL_DEFAULTS": "gcmodels.config",
    "BaselineConfig": "gcmodels.config",
    "CHECKPOINT_FORMAT": "gcmodels.diffusion",
    "CLIPImageEncoder": "gcmodels.embedding",
    "CLUSTERERS": "gcmodels.clustering",
    "CheckpointInfo": "gcmodels.diffusion",
    "CheckpointMismatch": "gcmodels.diffusion",
    "ClusterConfig": "gcmodels.config",
    "ClusteringResult": "gcmodels.clustering",
    "CollectionAutoencoder": "gcmodels.diffusion",
    "ConditionalDiffusion": "gcmodels.diffusion",
    "Conditioning": "gcmodels.clustering",
    "ConfigError": "gcmodels.config",
    "ConsistentChanges": "gcmodels.mining",
    "ConvAutoencoder": "gcmodels.embedding",
    "ConvAutoencoderEncoder": "gcmodels.embedding",
    "ConvVAEEncoder": "gcmodels.embedding",
    "DEC": "gcmodels.clustering",
    "DISTRACTOR_COLOR": "gcmodels.data",
    "DataConfig": "gcmodels.config",
    "DiffusionFeatureEncoder": "gcmodels.embedding",
    "DiscriminativeMiner": "gcmodels.baselines",
    "ENCODERS": "gcmodels.embedding",
    "Elements": "gcmodels.mining",
    "EmbedConfig": "gcmodels.config",
    "FID_FEATURES": "gcmodels.mining",
    "GMM_TOL": "gcmodels.clustering",
    "GaussianMixture": "gcmodels.clustering",
    "INCEPTION_DIM": "gcmodels.mining",
    "ImageRejected": "gcmodels.data",
    "KMeans": "gcmodels.clustering",
    "LABEL_JOIN": "gcmodels.labels",
    "LABEL_MODES": "gcmodels.clustering",
    "LORA_ABOVE_PARAMETERS": "gcmodels.config",
    "LORA_DEFAULT_RANK": "gcmodels.config",
    "LatentDiffusion": "gcmodels.diffusion",
    "LatentEncoder": "gcmodels.diffusion",
    "MAP_METHODS": "gcmodels.clustering",
    "MLPAutoencoder": "gcmodels.embedding",
    "MOTIF_STYLES": "gcmodels.data",
    "MinedDetectors": "gcmodels.baselines",
    "MiniBatchKMeans": "gcmodels.clustering",
    "ModelConfig": "gcmodels.config",
    "ModelLayoutError": "gcmodels.diffusion",
    "MotifStyle": "gcmodels.data",
    "NULL_LABEL": "gcmodels.diffusion",
    "NoisePredictor": "gcmodels.mining",
    "PAPER_THRESHOLDS": "gcmodels.mining",
    "PRECISIONS": "gcmodels.diffusion",
    "PRECISION_DTYPES": "gcmodels.runtime",
    "PREDICTION_DEFAULTS": "gcmodels.config",
    "PixelDiffusion": "gcmodels.diffusion",
    "PixelPCAEncoder": "gcmodels.embedding",
    "RankConfig": "gcmodels.config",
    "ReportConfig": "gcmodels.config",
    "RuntimeConfig": "gcmodels.config",
    "STORAGE_POLICY_KEY": "gcmodels.config",
    "Sampler": "gcmodels.diffusion",
    "ScoreConfig": "gcmodels.config",
    "Settings": "gcmodels.config",
    "StorageConfig": "gcmodels.config",
    "SyntheticImage": "gcmodels.data",
    "TracedKMeans": "gcmodels.clustering",
    "TrainConfig": "gcmodels.config",
    "TrainResult": "gcmodels.diffusion",
    "TrainingDiverged": "gcmodels.diffusion",
    "TranslateConfig": "gcmodels.config",
    "Translator": "gcmodels.mining",
    "TypicalityEstimator": "gcmodels.mining",
    "UnsupportedModel": "gcmodels.diffusion",
    "adaptive_maps": "gcmodels.mining",
    "assign_motif_styles": "gcmodels.data",
    "average_precision": "gcmodels.mining",
    "box_mean": "gcmodels.mining",
    "boxes_mask": "gcmodels.mining",
    "build_seeded": "gcmodels.embedding",
    "centroid_distances": "gcmodels.clustering",
    "change_maps": "gcmodels.mining",
    "check_ddim_settings": "gcmodels.diffusion",
    "check_device": "gcmodels.runtime",
    "checkpoint_defaults": "gcmodels.config",
    "choose_k": "gcmodels.clustering",
    "classification_accuracy": "gcmodels.mining",
    "cluster_name": "gcmodels.clustering",
    "cluster_names": "gcmodels.clustering",
    "clustering_metrics": "gcmodels.clustering",
    "conditioning_labels": "gcmodels.clustering",
    "count_labels": "gcmodels.labels",
    "configure_torch": "gcmodels.runtime",
    "confused_labels": "gcmodels.mining",
    "confusion_matrix": "gcmodels.mining",
    "consistent_changes": "gcmodels.mining",
    "contingency": "gcmodels.clustering",
    "cotypicality_frame": "gcmodels.mining",
    "ddim_denoise": "gcmodels.diffusion",
    "decode_image": "gcmodels.data",
    "digits_dataset": "gcmodels.data",
    "draw_order": "gcmodels.mining",
    "encode_png": "gcmodels.data",
    "estimate_eps": "gcmodels.clustering",
    "families": "gcmodels.diffusion",
    "fit_clustering": "gcmodels.clustering",
    "fits_on_collection": "gcmodels.embedding",
    "format_validation_error": "gcmodels.config",
    "frechet_distance": "gcmodels.mining",
    "frechet_distance_between": "gcmodels.mining",
    "gaussian_stats": "gcmodels.mining",
    "gpu_indices": "gcmodels.runtime",
    "half_width": "gcmodels.mining",
    "hog_cells": "gcmodels.baselines",
    "image_id": "gcmodels.data",
    "inception_features": "gcmodels.mining",
    "inspect_base": "gcmodels.diffusion",
    "join_labels": "gcmodels.labels",
    "label_matrix": "gcmodels.mining",
    "lloyd_trace": "gcmodels.clustering",
    "load_any_model": "gcmodels.diffusion",
    "load_base": "gcmodels.diffusion",
    "label_specificity": "gcmodels.mining",
    "localisation_report": "gcmodels.mining",
    "localisation_scores": "gcmodels.mining",
    "make_clusterer": "gcmodels.clustering",
    "make_encoder": "gcmodels.embedding",
    "make_reducer": "gcmodels.clustering",
    "may_hold_secret": "gcmodels.config",
    "mine_elements": "gcmodels.mining",
    "mixed_motif_dataset": "gcmodels.data",
    "motif_dataset": "gcmodels.data",
    "nearest_neighbours": "gcmodels.mining",
    "paper_aucpr": "gcmodels.mining",
    "patch_crops": "gcmodels.mining",
    "patch_descriptors": "gcmodels.baselines",
    "pointing_hit": "gcmodels.mining",
    "pool_map": "gcmodels.mining",
    "predict_labels": "gcmodels.mining",
    "project_2d": "gcmodels.clustering",
    "reason_kind": "gcmodels.data",
    "render_prompt": "gcmodels.prompts",
    "resolve_device": "gcmodels.runtime",
    "resolve_precision": "gcmodels.runtime",
    "round_sizes": "gcmodels.mining",
    "sample_quality": "gcmodels.mining",
    "scale_boxes": "gcmodels.mining",
    "secret_fields": "gcmodels.config",
    "soft_assignments": "gcmodels.clustering",
    "split_labels": "gcmodels.labels",
    "standard_error": "gcmodels.mining",
    "stratified_split": "gcmodels.mining",
    "supported_families": "gcmodels.diffusion",
    "target_distribution": "gcmodels.clustering",
    "to_uint8": "gcmodels.mining",
    "to_working": "gcmodels.data",
    "top_patches": "gcmodels.mining",
    "typical_weights": "gcmodels.mining",
    "train_autoencoder": "gcmodels.embedding",
    "train_collection_autoencoder": "gcmodels.diffusion",
    "train_diffusion": "gcmodels.diffusion",
    "typicality_from_losses": "gcmodels.mining",
    "unavailable_families": "gcmodels.diffusion",
    "validate_label_vocabulary": "gcmodels.diffusion",
    "validate_prompt_template": "gcmodels.prompts",
    "vocabulary": "gcmodels.labels",
    "working_size": "gcmodels.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gcmodels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
