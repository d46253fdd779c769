"""The gcmine settings: one frozen pydantic model per component, composed into `Settings`.

Every default is defined here, once. Flows take a `Settings`; tasks receive the sections (or
plain values) they need; model code receives explicit arguments. Loading from YAML and
``--set key=value`` overrides lives in ``flows/config.py`` (file I/O stays out of gcmodels).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, model_validator

from gcmodels.prompts import validate_prompt_template

__all__ = [
    "BASE_MODEL_DEFAULTS",
    "LORA_ABOVE_PARAMETERS",
    "LORA_DEFAULT_RANK",
    "PREDICTION_DEFAULTS",
    "STORAGE_POLICY_KEY",
    "BaselineConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "EmbedConfig",
    "ModelConfig",
    "RankConfig",
    "ReportConfig",
    "RuntimeConfig",
    "ScoreConfig",
    "Settings",
    "StorageConfig",
    "TrainConfig",
    "TranslateConfig",
    "checkpoint_defaults",
    "format_validation_error",
    "may_hold_secret",
    "secret_fields",
]


STORAGE_POLICY_KEY = (
    "gcmine"  # storage options entry holding gcmine's own retry policy (see StorageConfig.store_options)
)


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or inconsistent with another one."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Section):
    resolution: int = Field(
        64,
        ge=8,
        le=4096,
        description="working resolution the model sees: pixels per side (resize=square) or of the short side "
        "(resize=short_side); the pixel model's UNet sees it model.latent_factor times smaller (64 -> a 32 x 32 "
        "latent grid by default); with model.base the default is 256. Images larger than 64 px with small typical "
        "elements: up to their short side, e.g. 96 (about twice the time; benchmarks/RESULTS.md 12m)",
    )
    resize: Literal["square", "short_side"] = Field(
        "short_side",
        description="working images: square (resolution x resolution, aspect not kept) or short_side (the short "
        "side scaled to resolution, the long one to keep the aspect ratio, rounded to a multiple of data.bucket or of "
        "the model's downsampling factor: 8 with model.base, 2^(levels - 1) for the pixel model; images of one shape "
        "are batched together); with model.base the default is short_side",
    )
    bucket: int | None = Field(
        None,
        ge=1,
        description="resize=short_side: the long side is rounded to a multiple of this many working pixels, so that "
        "few shapes exist and batches stay full (SDXL-style buckets; the aspect ratio is kept to within half a "
        "bucket); a multiple of the model's downsampling factor, used up to an eighth of data.resolution; null = "
        "that factor; with model.base the default is 64",
    )
    max_pixels: int = Field(64_000_000, ge=1, description="images with more pixels are rejected (decompression bombs)")
    max_file_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="image files larger than this many bytes are rejected before they are read (a symlink to a huge "
        "file or a device)",
    )
    min_side: int = Field(
        8, ge=1, description="images with a side shorter than this many pixels are rejected (1x1 trackers, icons)"
    )
    max_aspect: float | None = Field(
        10.0,
        ge=1,
        description="images whose long side exceeds this many times the short side are rejected (banners); null = any shape",
    )
    max_labels: int = Field(
        1000,
        ge=1,
        description="most distinct labels a run accepts (one class embedding, elements and report section each)",
    )
    label_separator: str = Field(
        "|",
        description="separator of several labels of one image in a label value (LABELS, a manifest's label column, a "
        "label folder's name), e.g. 'effusion|nodule'; repeated rows of one filename add labels too. Each image is "
        "trained on its set of labels and scored and mined under each of them; '' = a value is one label",
    )
    shard_size: int = Field(256, ge=1, description="images per shard of the sharded stages (score, rank)")
    extensions: tuple[str, ...] = Field(
        (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
        description="file extensions ingested when IMAGES is a folder",
    )
    labels: Literal["auto", "given", "clusters"] = Field(
        "auto",
        description="labels that condition the model: given (LABELS or folder per label), clusters (the cluster "
        "stage's groups, named cluster-00, ...; noise -1 stays unlabelled), auto (given if any image has one, "
        "else clusters)",
    )


class EmbedConfig(_Section):
    method: Literal["pca", "autoencoder", "vae", "clip", "diffusion"] = Field(
        "pca",
        description="image encoder: pca (pixel thumbnails, no weights), autoencoder / vae (conv nets trained on "
        "the collection), clip (pretrained, from clip_path), diffusion (features of the fine-tuned model)",
    )
    size: int = Field(16, ge=2, le=256, description="thumbnail side the pca / autoencoder / vae encoders read")
    dim: int = Field(
        32, ge=1, description="embedding dimension of pca / autoencoder / vae (pca: clipped to the number of images)"
    )
    epochs: int = Field(30, ge=1, description="autoencoder / vae: training passes over the collection")
    batch_size: int = Field(64, ge=1, description="images per training step / per forward pass")
    lr: float = Field(1e-3, gt=0, description="autoencoder / vae: Adam learning rate")
    width: int = Field(32, ge=1, description="autoencoder / vae: channels of the first convolution")
    beta: float = Field(1.0, ge=0, description="vae: weight of the KL term of the ELBO")
    seed: int = Field(0, description="seed of the encoder's initialisation, batch order and noise")
    clip_path: str | None = Field(
        None, description="clip: local directory of a pretrained CLIP model (transformers layout)"
    )
    diffusion_t: float = Field(
        0.05, ge=0, le=1, description="diffusion: timestep of the features, fraction of the schedule"
    )
    diffusion_block: int = Field(
        0,
        description="diffusion: feature block of the fine-tuned model whose output is pooled (UNet decoder blocks: "
        "0 = the coarsest, -1 = the last; transformer blocks with model.base DiT / SD3)",
    )
    diffusion_grid: int = Field(
        4, ge=1, le=16, description="diffusion: activations averaged over a grid x grid partition (1 = global pooling)"
    )
    diffusion_draws: int = Field(2, ge=1, description="diffusion: noise draws averaged")

    @model_validator(mode="after")
    def _method_needs(self) -> EmbedConfig:
        if self.method == "clip" and not self.clip_path:
            raise ValueError("clip_path must name a local CLIP model directory when method is 'clip'")
        if self.method in ("autoencoder", "vae") and (self.size % 4 or self.size < 4):
            raise ValueError(
                f"size ({self.size}) must be a multiple of 4 for method {self.method!r} (two stride-2 convolutions)"
            )
        return self


class ClusterConfig(_Section):
    method: Literal["kmeans", "gmm", "dbscan", "hdbscan", "agglomerative", "dec"] = Field(
        "kmeans",
        description="clustering model: kmeans, gmm (Gaussian mixture), dbscan / hdbscan (density, noise = -1), "
        "agglomerative (ward etc., with dendrogram), dec (deep embedded clustering)",
    )
    k: int | None = Field(
        None, ge=1, description="number of clusters; null = choose by k_criterion (not for dbscan / hdbscan)"
    )
    k_criterion: Literal["silhouette", "bic"] = Field("silhouette", description="how k is chosen when k is null")
    k_min: int = Field(2, ge=2, description="smallest k tried when choosing k")
    k_max: int = Field(12, ge=2, description="largest k tried when choosing k")
    k_sample: int = Field(20_000, ge=3, description="rows (a random subset) on which k is chosen")
    n_init: int = Field(4, ge=1, description="k-means restarts / mixture initialisations (best objective kept)")
    max_iter: int = Field(300, ge=1, description="Lloyd / EM iterations per restart (mini-batch k-means: passes)")
    seed: int = Field(0, description="random_state of the clustering")
    reduce: Literal["none", "pca", "umap"] = Field(
        "none", description="dimensionality reduction before clustering (umap needs umap-learn)"
    )
    reduce_dim: int = Field(16, ge=1, description="dimension after reduction (clipped to the embedding dimension)")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="k-means mini-batch rows; null = Lloyd up to minibatch_above rows, batches of 4096 beyond",
    )
    minibatch_above: int = Field(100_000, ge=1, description="k-means switches to mini-batches above this many rows")
    covariance_type: Literal["full", "diag", "spherical"] = Field(
        "full", description="gmm (and BIC): covariance per component"
    )
    eps: float | None = Field(
        None, gt=0, description="dbscan radius; null = median distance to the min_samples-th neighbour"
    )
    min_samples: int = Field(5, ge=1, description="dbscan / hdbscan: neighbours that make a core point")
    min_cluster_size: int = Field(5, ge=2, description="hdbscan: smallest cluster")
    linkage: Literal["ward", "complete", "average", "single"] = Field(
        "ward", description="agglomerative merge criterion"
    )
    dec_hidden: tuple[int, ...] = Field((256, 128), min_length=1, description="dec: encoder hidden widths")
    dec_latent_dim: int = Field(10, ge=1, description="dec: embedded space dimension")
    dec_pretrain_epochs: int = Field(100, ge=0, description="dec: autoencoder pre-training passes")
    dec_epochs: int = Field(100, ge=0, description="dec: most KL refinement passes")
    dec_batch_size: int = Field(256, ge=1, description="dec: rows per step")
    dec_lr: float = Field(1e-3, gt=0, description="dec: Adam learning rate")
    silhouette_sample: int = Field(
        10_000, ge=2, description="rows (a random subset) the silhouette metric is computed on"
    )

    @model_validator(mode="after")
    def _k_range(self) -> ClusterConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        if self.k is not None and self.method in ("dbscan", "hdbscan"):
            raise ValueError(
                f"k ({self.k}) cannot be set for method {self.method!r}, which finds the number of clusters itself"
            )
        if any(h < 1 for h in self.dec_hidden):
            raise ValueError(f"dec_hidden {self.dec_hidden} must hold positive layer widths")
        return self


class ModelConfig(_Section):
    base: str | None = Field(
        None,
        description="local diffusers directory of a checkpoint to fine-tune in latent space: Stable Diffusion 1.x/2.x, "
        "SDXL, SD3/SD3.5 or DiT, told apart by its model_index.json and component configs (each family has its own "
        "defaults, see `gcmine config --set model.base=DIR`); null = small pixel UNet from scratch",
    )
    prediction: Literal["epsilon", "v_prediction", "flow_matching"] = Field(
        "epsilon",
        description="pixel model: what the UNet learns to predict: epsilon (DDPM noise), v_prediction (v = sqrt(abar) eps "
        "- sqrt(1-abar) x0) or flow_matching (rectified flow, velocity eps - x0); scores are read in eps space alike. "
        "model.base uses its checkpoint's own",
    )
    class_map: str | None = Field(
        None,
        description="model.base with a class-conditional checkpoint (DiT): CSV with columns label,class_id giving the "
        "checkpoint class each label conditions on; null = labels that are class ids (e.g. 207)",
    )
    prompt_template: str = Field(
        "An image of {label}.",
        description="model.base: the prompt of a label ({label} = the label, underscores as spaces); the same in "
        "fine-tuning, scoring and patch features",
    )
    null_prompt: str = Field(
        "", description="model.base: the prompt of the unconditional branch (label dropout, typicality)"
    )
    latent_factor: int = Field(
        2,
        ge=1,
        description="pixel model: 2, 4 or 8 = a small autoencoder is first learnt on the collection's working images "
        "(train.autoencoder_*) and the UNet denoises its latents, a grid this many times smaller (a shallow latent "
        "diffusion model: the default data.resolution 64 with 2 gives the UNet a 32 x 32 grid on which parts are twice "
        "as sharp as on 32 px pixels, for 1.2-1.3x the fine-tuning time, benchmarks/RESULTS.md 12i-12l); 1 = the UNet "
        "denoises the working images' pixels (the default before 12l, and still the default when data.resolution is "
        "under 64, e.g. a settings file with data.resolution 32: the former default model); with model.base the "
        "default is 1 (its own VAE)",
    )
    latent_channels: int = Field(4, ge=1, description="model.latent_factor > 1: channels of the autoencoder's latents")
    autoencoder_width: int = Field(
        32, ge=4, description="model.latent_factor > 1: channels of the autoencoder's convolutions"
    )
    block_out_channels: tuple[int, ...] = Field((32, 64, 64), min_length=1, description="UNet channels per level")
    layers_per_block: int = Field(1, ge=1, description="resnet layers per UNet level")
    num_train_timesteps: int = Field(1000, ge=10, description="diffusion steps of the DDPM schedule")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "linear", description="DDPM betas of the pixel model (model.base uses its checkpoint's schedule)"
    )

    @model_validator(mode="before")
    @classmethod
    def _pixel_space_with_base(cls, values: object) -> object:
        """model.base brings its own VAE: model.latent_factor defaults to 1 there (a value the user gives is kept,
        and refused below when it is not 1)."""
        if isinstance(values, dict) and values.get("base") is not None and "latent_factor" not in values:
            return {**values, "latent_factor": 1}
        return values

    @model_validator(mode="after")
    def _template(self) -> ModelConfig:
        validate_prompt_template(self.prompt_template)
        if self.latent_factor & (self.latent_factor - 1):
            raise ValueError(f"latent_factor ({self.latent_factor}) must be a power of 2 (1 = pixel space)")
        if self.latent_factor > 1 and self.base is not None:
            raise ValueError(
                f"latent_factor ({self.latent_factor}) applies to the pixel model: model.base has its own VAE; leave it 1"
            )
        return self

    def latent_fields(self) -> set[str]:
        """The settings of the collection autoencoder (they make another model only when latent_factor > 1)."""
        return {"latent_factor", "latent_channels", "autoencoder_width"}


class TrainConfig(_Section):
    steps: int | None = Field(None, ge=1, description="optimizer steps; null = scale with the dataset (epochs)")
    epochs: float = Field(40.0, gt=0, description="passes over the data when steps is null")
    min_steps: int = Field(
        1000,
        ge=1,
        description="lower bound of the automatic budget (small collections: 500 steps learn the large motifs but "
        "not small parts or mixed shapes, benchmarks/RESULTS.md 12g)",
    )
    max_steps: int = Field(4000, ge=1, description="upper bound of the automatic budget")
    minutes: float | None = Field(None, gt=0, description="wall-clock cap on training (stops early, keeps the model)")
    batch_size: int = Field(32, ge=1, description="images per optimizer step")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps, then cosine decay to lr/10")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    label_dropout: float = Field(0.15, ge=0, lt=1, description="probability of training on the null label")
    loss_weighting: Literal["auto", "native", "eps"] = Field(
        "auto",
        description="per-sample weight of the training loss: native (plain MSE on the model's own target), eps "
        "(weighted so that the loss is the eps-space MSE the typicality maps measure: abar for v, (1-s)^2 for flow), "
        "auto = eps for v-prediction models, native otherwise",
    )
    checkpoint_every: int = Field(
        100,
        ge=1,
        description="steps between checkpoints: the last one is the NaN guard's restore point, and an interrupted "
        "finetune resumes from it (weights, optimizer, data order, random state)",
    )
    checkpoint_minutes: float | None = Field(
        None,
        ge=0,
        description="write the resumable checkpoint by wall time: after the first step this many minutes since the "
        "last one (instead of every checkpoint_every steps, which then only sets the NaN guard's in-memory restore "
        "point); null = by steps; with model.base the default is 15 (a multi-GB state is not written every 100 steps)",
    )
    square_crops: bool | None = Field(
        None,
        description="pixel model with data.resize=short_side: train on overlapping square crops of the working images "
        "(side = the short side, stride half of it, covering the long side) instead of whole images batched by shape: "
        "one shape, full batches; the budget still counts images; scoring and ranking see whole images; null = on for "
        "the pixel model under data.resize=short_side, off otherwise (model.base, data.resize=square)",
    )
    autoencoder_steps: int = Field(
        1500,
        ge=1,
        description="model.latent_factor > 1: optimizer steps of the collection autoencoder (batch train.batch_size), "
        "before the diffusion model's; fewer lose most of the latent model's gain (benchmarks/RESULTS.md 12h)",
    )
    autoencoder_lr: float = Field(
        1e-3, gt=0, description="model.latent_factor > 1: the autoencoder's Adam learning rate"
    )
    autoencoder_crop: int | None = Field(
        32,
        ge=2,
        description="model.latent_factor > 1: the autoencoder trains on random square crops of this side of the working "
        "images (at most their smallest side; null = that smallest side: whole square images). 32 px crops of 64 px "
        "images cost a quarter of whole images and pointed as well on the parts set (benchmarks/RESULTS.md 12i)",
    )
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after warm-up: cosine decay to lr/10, or constant (the paper's SD fine-tuning)"
    )
    ema_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="exponential moving average of the weights (e.g. 0.999), used for scoring; null = off",
    )
    lora_rank: int = Field(
        0, ge=0, description="model.base: LoRA adapters of this rank on the UNet attention (peft); 0 = full fine-tuning"
    )
    lora_alpha: float | None = Field(None, gt=0, description="model.base: LoRA scaling alpha; null = lora_rank")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False,
        description="recompute activations in the backward pass (less memory, ~30% slower); 'auto' = on only when "
        "a probe step on the CUDA device shows the fine-tuning would not fit in 85% of its free memory without it "
        "(off on a CPU); with model.base the default is 'auto'",
    )
    retrain_fraction: float = Field(
        0.25, ge=0, description="rerun on changed data: retrain when more than this share of the training set changed"
    )
    seed: int = Field(0, description="seed of initialisation, batches, noise")
    processes: int = Field(
        1,
        ge=1,
        description="data-parallel fine-tuning processes: on CUDA one per GPU (from runtime.device's card on; at "
        "most the visible GPUs), each taking batch_size / processes images of every batch (the same steps and model "
        "as one process, up to float summation order); on a CPU gloo processes sharing its cores (for testing, not "
        "faster); batch_size must be divisible by it",
    )

    @model_validator(mode="after")
    def _bounds(self) -> TrainConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        if self.batch_size % self.processes:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.processes ({self.processes}): each "
                "process takes the same share of every batch"
            )
        return self

    def budget(self, n_images: int) -> int:
        """Optimizer steps for a dataset of `n_images` (explicit `steps` wins)."""
        if self.steps is not None:
            return self.steps
        auto = math.ceil(self.epochs * n_images / self.batch_size)
        return int(min(max(auto, self.min_steps), self.max_steps))

    def trainer_settings(self) -> dict[str, Any]:
        """The keywords of `gcmodels.diffusion.train_diffusion` these settings decide: everything but
        the steps (`budget`), the generator, the precision, the loss weighting (resolved by the
        model) and the callbacks."""
        return {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "label_dropout": self.label_dropout,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_seconds": None if self.checkpoint_minutes is None else 60.0 * self.checkpoint_minutes,
            "max_seconds": None if self.minutes is None else 60.0 * self.minutes,
            "lr_schedule": self.lr_schedule,
            "ema_decay": self.ema_decay,
        }


class ScoreConfig(_Section):
    draws: int = Field(16, ge=1, description="(t, eps) draws N per image (stratified t, shared across images)")
    compare_base: bool = Field(
        False,
        description="with model.base: score the same images with the checkpoint before fine-tuning too (the same "
        "draws, plain scoring), stored apart (maps_base/, scores_base/); gcmine evaluate and the report show both "
        "models side by side",
    )
    t_min: float = Field(
        0.1,
        ge=0,
        le=1,
        description="smallest t, as a fraction of the DDPM schedule (a signal-to-noise ratio: flow-matching models "
        "are scored at the flow level of equal SNR, on SD 1.x's schedule for SD3)",
    )
    t_max: float = Field(0.7, ge=0, le=1, description="largest t, as a fraction of the DDPM schedule (see t_min)")
    batch_size: int = Field(
        32,
        ge=2,
        description="UNet inputs per forward pass (both branches counted); 32 keeps the small UNet's activations "
        "in CPU cache (1.3-1.6x the forwards/s of 128 on a CPU); raise it on a GPU",
    )
    seed: int = Field(0, description="seed of the draws (the same draws for every image)")
    cotypicality: bool = Field(
        False, description="score every image under every label (one row per image and label in typicality.parquet)"
    )
    contrast: bool | None = Field(
        None,
        description="label contrast: the maps (what rank, the elements and the report read) and the own-label image "
        "scores are T(x | c) minus the mean of T(x | c') over the other labels (the null branch cancels: a region "
        "every label denoises alike scores zero however hard it is; see gcmodels/mining/typicality.py). null (the "
        "default): on when the model has 2 labels or more and adaptive is off, else the paper's typicality maps; "
        "true: on (refused with one label); false: the paper's typicality maps T(x | c)",
    )
    contrast_rivals: Literal["all", "cycled"] = Field(
        "cycled",
        description="with contrast: 'cycled' gives each draw one rival label in place of the null one, the other "
        "labels cycled over the draws (2 UNet inputs per draw, the cost of plain scoring; the same expectation when "
        "draws >= L - 1, more variance) or 'all' scores every draw under every label (L + 1 inputs per draw, the "
        "exact mean over the other labels on the same draws). With cotypicality every label is scored anyway and "
        "'all' is used",
    )
    holdout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each label's images kept out of fine-tuning to test typicality as a classifier "
        "(needs cotypicality; 0 = none)",
    )
    adaptive: bool = Field(
        False,
        description="adaptive draws: a first pass of adaptive_first draws per image, then rounds that double the draws "
        "only of images whose best patch could still enter its label's top rank.per_label patches in the shard "
        "(successive elimination, see gcmodels/mining/adaptive.py); those end with the N draws and the map of plain scoring",
    )
    adaptive_first: int = Field(
        4, ge=2, description="draws of the adaptive first pass (n0; rounds then double it up to draws)"
    )
    adaptive_z: float = Field(
        2.0,
        gt=0,
        description="confidence of the adaptive rule: an image is settled when its best patch's mean + adaptive_z standard "
        "errors is below the label's top-K threshold (computed from the patches' mean - adaptive_z standard errors)",
    )
    adaptive_rule: Literal["elimination", "decision"] = Field(
        "elimination",
        description="when an image stops: 'elimination' (its best patch surely cannot enter its label's top-K of the "
        "shard) or 'decision' (its top-K membership and its own selection of patches are decided, by paired "
        "differences over the shared draws; see gcmodels/mining/adaptive.py)",
    )
    adaptive_decide: int = Field(
        1,
        ge=0,
        description="with adaptive_rule 'decision': how many of an image's rank.per_image patches (best first) must "
        "be decided before it stops (1: the rank-0 patch)",
    )
    adaptive_variance: Literal["own", "moderated"] = Field(
        "own",
        description="with adaptive_rule 'decision': the variance of its paired tests: 'own' (each comparison's own, "
        "from its image's pairs of draws: n/2 degrees of freedom) or 'moderated' (empirical Bayes, limma's moderated "
        "t: each comparison's variance shrunk toward a prior fitted on all the shard's comparisons of the round, with "
        "the prior's degrees of freedom added; see gcmodels/mining/adaptive.py)",
    )

    def contrast_mode(self, n_labels: int) -> Literal["all", "cycled"] | None:
        """How the maps of a model of `n_labels` labels are scored: None (typicality maps), or label
        contrast with every label on every draw ('all') or one rival per draw ('cycled'). Raises
        ValueError when contrast is asked for (true) with fewer than 2 labels."""
        if self.contrast is True and n_labels < 2:
            raise ValueError(
                f"score.contrast=true needs 2 labels or more, this run has {n_labels}: set score.contrast=false "
                "(or leave it unset: typicality maps with one label)"
            )
        on = self.contrast if self.contrast is not None else (n_labels >= 2 and not self.adaptive)
        if not on:
            return None
        return "all" if self.cotypicality else self.contrast_rivals

    @model_validator(mode="after")
    def _t_range(self) -> ScoreConfig:
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than t_max ({self.t_max})")
        if self.adaptive and self.cotypicality:
            raise ValueError(
                "adaptive: true does not support cotypicality: true yet (it refines each image's own-label map only)"
            )
        if self.adaptive and self.contrast is True:
            raise ValueError(
                "adaptive: true does not support contrast: true yet (it refines each image's own-label map only)"
            )
        if self.holdout > 0 and not self.cotypicality:
            raise ValueError(
                f"holdout ({self.holdout}) needs cotypicality: true (the classifier compares every label's typicality)"
            )
        return self


WARD_MAX_PATCHES = 30_000  # rank.per_label Ward clusters: n (n - 1) / 2 float64 distances, 3.4 GiB at 30 000


class RankConfig(_Section):
    patch_size: int | None = Field(None, ge=1, description="patch side in working pixels; null = 0.2 x resolution")
    per_image: int = Field(5, ge=1, description="top non-overlapping patches kept per image")
    per_label: int = Field(1000, ge=1, description="most typical patches kept per label for clustering")
    elements: int = Field(
        24,
        ge=1,
        description="visual elements (clusters) per label (16 before RESULTS.md 12k; the paper clusters 1000 patches into 32)",
    )
    clustering: Literal["kmeans", "ward"] = Field(
        "ward",
        description="how a label's kept patches are clustered into elements: 'ward' (agglomerative, deterministic; "
        "the default since RESULTS.md 12k: on the ground-truth sets every top element pure where k-means merged the "
        "shared distractor into one in some of its draws) or 'kmeans' (the paper's; rank.seed draws it)",
    )
    shared_elements: Literal["keep", "last"] = Field(
        "keep",
        description="elements whose patches' nearest patches (rank.specificity_neighbours, over every label's kept "
        "patches) mostly carry other labels are flagged shared (elements.parquet: specificity, shared; the report "
        "marks them): 'keep' ranks by median typicality alone (the paper's order), 'last' ranks every label-specific "
        "element before them: on the motif sets it keeps the ring every label has out of the first elements, but on "
        "the parts sets most part elements are flagged too (benchmarks/RESULTS.md 12j)",
    )
    specificity_neighbours: int = Field(
        10, ge=1, description="nearest patches that measure an element's label-specificity (rank.shared_elements)"
    )
    feature_pool: Literal["mean", "typical"] | None = Field(
        None,
        description="how a patch's feature is pooled from the feature map: 'mean' over the whole patch (the paper), "
        "'typical' weighted by how far the typicality map exceeds the image's median there, so that the feature "
        "describes what made the patch typical rather than its surroundings; null = 'typical' for the pixel model "
        "on latents (model.latent_factor > 1, the default), 'mean' otherwise (benchmarks/RESULTS.md 12k-12l)",
    )
    feature_t: float = Field(0.16, ge=0, le=1, description="timestep of the diffusion features, fraction of schedule")
    feature_draws: int = Field(4, ge=1, description="noise draws averaged for the features")
    feature_block: int = Field(
        -1,
        description="block whose output is the feature: a UNet decoder block (-1 = the last, full resolution), or for "
        "transformer checkpoints (SD3, DiT) a transformer block whose image tokens are laid back on the latent grid",
    )
    feature_batch: int = Field(
        64,
        ge=1,
        description="most UNet inputs (images x feature_draws) per feature forward; 64 fits a 24 GB card with Stable "
        "Diffusion at 512 px: lower it on out-of-memory, raise it on a larger card",
    )
    seed: int = Field(0, description="seed of feature noise and element clustering")

    @model_validator(mode="after")
    def _ward_fits(self) -> RankConfig:
        if self.clustering == "ward" and self.per_label > WARD_MAX_PATCHES:
            gib = 8 * self.per_label * (self.per_label - 1) / 2 / 2**30
            raise ValueError(
                f"rank.clustering=ward holds the pairwise distances of a label's rank.per_label patches: "
                f"{self.per_label} need about {gib:.1f} GiB; set rank.clustering=kmeans, or rank.per_label <= "
                f"{WARD_MAX_PATCHES}"
            )
        return self


class TranslateConfig(_Section):
    enabled: bool = Field(
        False, description="translate the top images of each label's best element to every other label"
    )
    images_per_label: int = Field(4, ge=1, description="source images per label (the top images of its rank-0 element)")
    strength: float = Field(
        0.6, ge=0, le=1, description="noise level of the partial noising (0 = unchanged, 1 = from pure noise)"
    )
    steps: int = Field(50, ge=1, description="DDIM steps over the whole schedule (ceil(steps x strength) are run)")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale (1 = the plain conditional model)")
    clusters: int = Field(4, ge=1, description="consistent-change clusters (k-means over the most changed patches)")
    seed: int = Field(0, description="seed of the translation noise and the change clustering")


class BaselineConfig(_Section):
    enabled: bool = Field(
        False, description="also run the Doersch et al. 2012 baseline (HOG + linear detectors) on the working images"
    )
    cell_size: int = Field(4, ge=2, description="HOG cell side in working pixels")
    patch_cells: int | None = Field(
        None, ge=1, description="patch side in cells; null = the typicality patch size in cells"
    )
    detectors: int = Field(10, ge=1, description="detectors trained per label")
    keep: int = Field(5, ge=1, description="best detectors per label whose detections are kept")
    rounds: int = Field(3, ge=1, description="rounds of iterative retraining")
    seed: int = Field(0, description="seed of the candidate sampling and the folds")


class ReportConfig(_Section):
    elements_per_label: int = Field(6, ge=1, description="elements shown per label")
    patches_per_element: int = Field(8, ge=1, description="patch crops shown per element")
    heatmaps_per_label: int = Field(4, ge=0, description="full images with the typicality map shown per label")
    map_method: Literal["pca", "tsne", "umap"] = Field(
        "pca", description="2-D map of the collection's embeddings: pca, tsne, umap (needs umap-learn)"
    )
    map_interactive_max: int = Field(
        1000, ge=0, description="the map is interactive (hover shows the image) up to this many images; 0 = never"
    )
    map_thumbnails_per_cluster: int = Field(4, ge=0, description="thumbnails shown per cluster next to the map")
    map_seed: int = Field(0, description="random_state of the t-SNE / UMAP map")
    samples: int = Field(
        8,
        ge=0,
        le=256,
        description="samples generated per label by the fine-tuned model (seeded DDIM from noise), shown beside real "
        "images with the Frechet distance to them on the embed encoder's features; 0 = none",
    )
    sample_steps: int = Field(
        25, ge=1, le=1000, description="DDIM steps of each sample (the cost is samples x labels x steps network passes)"
    )
    sample_seed: int = Field(0, description="seed of the samples' noise (each label gets the same noises)")
    inception: str | None = Field(
        None,
        description="local path of the FID Inception-v3 network as TorchScript (NVIDIA's inception-2015-12-05.pt of "
        "StyleGAN2-ADA / EDM / clean-fid): the samples are then compared with the real images on its 2048 pool "
        "features, and the Frechet distance is the FID; nothing is downloaded. null = the embed encoder's features "
        "(a Frechet distance, never called FID)",
    )
    serve_port: int = Field(
        8765,
        ge=1024,
        le=65535,
        description="port of `gcmine serve` (127.0.0.1) that the Prefect UI's report link of a local run root points at",
    )
    link_hours: int = Field(
        168,
        ge=0,
        le=168,
        description="validity of the presigned report link the Prefect UI shows for an S3 run root (at most 7 days; "
        "it holds the access key id, not the secret); 0 = none, the UI points at `gcmine serve`",
    )


class RuntimeConfig(_Section):
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="compute precision of the UNet on CUDA (training autocast, scoring weights; loss math stays "
        "fp32): auto = bf16 where the GPU supports it, else fp16; always fp32 on CPU",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")
    workers: int | Literal["auto"] = Field(
        "auto",
        description="task runner threads (shards run concurrently; runner=threads); auto = 2 when the device is "
        "CUDA (one shard's reading and writing overlap another's compute, the card computing one at a time), "
        "else 1 (on the CPU the compute takes the cores)",
    )
    progress: bool = Field(True, description="progress bars on the terminal")
    runner: Literal["threads", "dask"] = Field(
        "threads",
        description="task runner: 'threads' (one machine) or 'dask' (shards of score and rank on Dask workers)",
    )
    dask_address: str | None = Field(
        None,
        description="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; null = start a local cluster",
    )
    dask_workers: int = Field(
        2, ge=1, description="worker processes of the local Dask cluster (runner=dask, no address)"
    )
    gpus: Literal["all"] | int | list[int] | None = Field(
        None,
        description="spread the per-shard stages (latents, embed, score, rank) over GPUs of this node: 'all', a "
        "count (the first N) or a list of CUDA indices; one Dask worker process per GPU, each seeing only its own "
        "card (CUDA_VISIBLE_DEVICES), fine-tuning on the first; needs gcmine[dask]; null = one device "
        "(runtime.device)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the denoiser for scoring (compiled once per worker process; on CUDA also the "
        "channels-last layout and cuDNN's autotuner, so maps may differ in the last bits between runs)",
    )
    gpu_limit: str | None = Field(
        "gpu", description="Prefect concurrency limit a GPU stage takes one slot of (one slot per GPU); null = none"
    )
    gpu_limit_strict: bool = Field(
        False, description="fail a GPU stage when the gpu_limit does not exist on the server (default: warn and run)"
    )

    @model_validator(mode="after")
    def _runner_settings(self) -> RuntimeConfig:
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError(
                f"runtime.dask_address ({self.dask_address!r}) is set but runtime.runner is {self.runner!r}, not 'dask'"
            )
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f"runtime.workers must be 'auto' or at least 1, got {self.workers}")
        gpus = self.gpus
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus < 1:
            raise ValueError(f"runtime.gpus must be 'all', a count >= 1 or a list of CUDA indices, got {gpus}")
        if isinstance(gpus, list) and (not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0):
            raise ValueError(f"runtime.gpus must list distinct CUDA indices (>= 0), got {gpus}")
        if gpus is not None and self.dask_address is not None:
            raise ValueError(
                "runtime.gpus starts a local cluster of one worker per GPU of this node, but runtime.dask_address "
                f"({self.dask_address!r}) names a cluster: pin that cluster's workers to their GPUs where they start "
                "(CUDA_VISIBLE_DEVICES or dask-cuda), and leave runtime.gpus null"
            )
        if gpus is not None and self.device not in ("auto", "cuda"):
            raise ValueError(
                f"runtime.gpus pins each worker to one card, which it sees as cuda: leave runtime.device at auto "
                f"(got {self.device!r})"
            )
        if self.gpu_limit is not None and not self.gpu_limit.strip():
            raise ValueError("runtime.gpu_limit must name a concurrency limit (or be null for none)")
        return self


class StorageConfig(_Section):
    """Object-store access for s3:// images and run roots. Unset fields fall back to the standard
    AWS environment and files (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws/...)."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    region: str | None = Field(None, description="S3 region")
    profile: str | None = Field(None, description="AWS profile name in ~/.aws/credentials")
    key: SecretStr | None = Field(None, description="access key id (prefer the environment or a profile)")
    secret: SecretStr | None = Field(None, description="secret access key (prefer the environment or a profile)")
    connect_timeout: float = Field(
        10.0, gt=0, description="seconds to open a connection to the object store before the attempt fails"
    )
    read_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds without a byte from the object store before the attempt fails (a stalled endpoint)",
    )
    retries: int = Field(
        4, ge=0, description="retries of a failed object-store call (backoff 0.5, 1, 2, 4 s, ...); the only retry layer"
    )
    deadline: float = Field(
        120.0,
        gt=0,
        description="seconds after which a failing object-store call is not retried again; a write is also cut then "
        "(plus a second per MiB sent), so a stalled endpoint ends in an error naming the URI",
    )
    lease: Literal["wait", "refuse"] = Field(
        "wait",
        description="when another run holds the run root (it is writing there): wait for it (up to lease_wait) or "
        "refuse at once, naming it",
    )
    lease_wait: float = Field(
        3600.0, ge=0, description="lease=wait: most seconds to wait for the run root before giving up"
    )
    lease_expiry: float = Field(
        120.0,
        ge=5,
        description="a run renews its lease of the run root every lease_expiry/4 s; one not renewed for lease_expiry s "
        "(crashed, killed, cut off) is presumed dead and its lease is taken over",
    )

    def options(self) -> dict:
        """`storage_options` for s3fs, pandas and pyarrow-through-fsspec alike (secrets included:
        never log or persist the result): credentials, endpoint, region, and botocore's connect and
        read timeouts with botocore's own retries off (gcmine retries whole operations itself)."""
        opts: dict = {
            "config_kwargs": {
                "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout,
                "retries": {"total_max_attempts": 1},
            }
        }
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            opts["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            opts["profile"] = self.profile
        if self.key is not None:
            opts["key"] = self.key.get_secret_value()
        if self.secret is not None:
            opts["secret"] = self.secret.get_secret_value()
        return opts

    def store_options(self) -> dict:
        """`options()` plus gcmine's retry policy for object-store calls (retries, deadline) under
        `STORAGE_POLICY_KEY`, for gcmine's storage layer (tasks/infra/storage.py), which strips it before
        fsspec sees the options."""
        return {**self.options(), STORAGE_POLICY_KEY: {"retries": self.retries, "deadline": self.deadline}}


# Defaults that change when model.base names a checkpoint (the paper's settings for SD 1.5, see
# METHOD.md); each family adds its own on top for the checkpoint at hand (`checkpoint_defaults`:
# working resolution, feature block, LoRA above LORA_ABOVE_PARAMETERS); a value the user gives
# always wins. Defined here only.
BASE_MODEL_DEFAULTS: dict[str, dict] = {
    "data": {"resolution": 256, "resize": "short_side", "bucket": 64},
    "train": {
        "lr": 1e-4,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "label_dropout": 0.1,
        "batch_size": 8,
        "gradient_checkpointing": "auto",
        "checkpoint_minutes": 15,
        "min_steps": 500,  # the pixel model's 1000 was measured on the pixel model only (RESULTS.md 12g)
    },
    "rank": {"feature_block": 1, "feature_t": 0.161, "feature_draws": 8},
    "score": {"batch_size": 128},  # a GPU's batch: 4 images x 16 draws x 2 prompts per forward
}


# The pixel model's defaults per parametrisation (model.prediction), unless set. A v-prediction
# pixel UNet learns the ground-truth demo's motifs in twice the optimizer steps of an eps one
# (rank-0 patch on the motif 84.8 % at 500 steps, 98.0 % at 1000; eps 95.5 % at 500:
# benchmarks/RESULTS.md 10c): its automatic budget is twice the eps one.
PREDICTION_DEFAULTS: dict[str, dict[str, dict]] = {
    "v_prediction": {"train": {"epochs": 80.0, "min_steps": 2000}},
}

LORA_ABOVE_PARAMETERS = 2_000_000_000  # denoisers larger than this fine-tune LoRA adapters by default
LORA_DEFAULT_RANK = 16  # train.lora_rank then


def checkpoint_defaults(family_defaults: dict, parameters: int | None) -> dict:
    """The defaults a checkpoint adds on top of BASE_MODEL_DEFAULTS: its family's (working
    resolution, resize, feature block, as the family module reads them from the checkpoint) and
    LoRA (train.lora_rank = LORA_DEFAULT_RANK) when its denoiser has more than LORA_ABOVE_PARAMETERS
    parameters (full fine-tuning of an SDXL UNet or an SD3.5 transformer needs tens of GB)."""
    out = {section: dict(values) for section, values in family_defaults.items()}
    if parameters is not None and parameters > LORA_ABOVE_PARAMETERS:
        out.setdefault("train", {}).setdefault("lora_rank", LORA_DEFAULT_RANK)
    return out


def _given(values: dict, section: str) -> dict:
    """The fields of `section` the user set, as a dict (a section may arrive as a model)."""
    given = values.get(section, {})
    return given.model_dump(include=given.model_fields_set) if isinstance(given, BaseModel) else dict(given)


def _prediction_defaults(values: dict, model: object) -> dict:
    """The pixel model's PREDICTION_DEFAULTS for its model.prediction, under the settings the user set."""
    prediction = model.get("prediction") if isinstance(model, dict) else getattr(model, "prediction", None)
    defaults = PREDICTION_DEFAULTS.get(str(prediction), {})
    if not defaults:
        return values
    out = dict(values)
    for section, fields in defaults.items():
        out[section] = {**fields, **_given(values, section)}
    return out


def _min_steps_under_cap(values: dict, given_train: dict) -> dict:
    """A default train.min_steps (the field's, a checkpoint's or a parametrisation's) never exceeds a
    train.max_steps the user set (`given_train`): that is their cap. A min_steps the user set is kept
    (and checked against max_steps)."""
    if "min_steps" in given_train or "max_steps" not in given_train:
        return values
    train = _given(values, "train")
    default = train.get("min_steps", TrainConfig.model_fields["min_steps"].default)
    return {**values, "train": {**train, "min_steps": min(default, given_train["max_steps"])}}


def _square_crops_default(values: dict) -> dict:
    """The pixel model trains on square crops of aspect-kept working images unless told otherwise
    (train.square_crops null = on under data.resize=short_side: benchmarks/RESULTS.md 12)."""
    train = _given(values, "train")
    if train.get("square_crops") is not None:
        return values
    resize = _given(values, "data").get("resize", DataConfig.model_fields["resize"].default)
    return {**values, "train": {**train, "square_crops": resize == "short_side"}}


LATENT_MIN_RESOLUTION = 64  # the smallest data.resolution at which the pixel model denoises latents by default


def _whole_number(value: object) -> int | None:
    """A given setting as an int for a default that depends on it; None when it is not one (then the
    field's own validation reports it, naming the setting)."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _latent_factor_default(values: dict, base: object) -> dict:
    """model.latent_factor unset: the shallow latent model (the field's default, 2) from data.resolution
    64 up, where its UNet gets a grid of 32 or more (benchmarks/RESULTS.md 12l); the UNet on pixels below
    (a settings file with data.resolution 32 keeps the former default model, not a 16 x 16 latent grid).
    model.base: its own VAE (`ModelConfig`'s validator)."""
    given = _given(values, "model")
    if base is not None or given.get("latent_factor") is not None:
        return values
    resolution = _whole_number(_given(values, "data").get("resolution", DataConfig.model_fields["resolution"].default))
    if resolution is None or resolution >= LATENT_MIN_RESOLUTION:
        return values
    return {**values, "model": {**given, "latent_factor": 1}}


def _feature_pool_default(values: dict, base: object) -> dict:
    """rank.feature_pool null = 'typical' where the pixel model denoises its autoencoder's latents (its
    features of a patch were mostly the patch's surroundings: benchmarks/RESULTS.md 12k), 'mean' (the
    paper's) for the pixel model on pixels and for checkpoints (not measured there)."""
    rank = _given(values, "rank")
    if rank.get("feature_pool") is not None:
        return values
    factor = _given(values, "model").get("latent_factor", ModelConfig.model_fields["latent_factor"].default)
    latent = base is None and (_whole_number(factor) or 1) > 1
    return {**values, "rank": {**rank, "feature_pool": "typical" if latent else "mean"}}


class Settings(_Section):
    data: DataConfig = DataConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    rank: RankConfig = RankConfig()
    translate: TranslateConfig = TranslateConfig()
    baseline: BaselineConfig = BaselineConfig()
    report: ReportConfig = ReportConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="before")
    @classmethod
    def _base_model_defaults(cls, values: object, info: ValidationInfo) -> object:
        """With model.base set, fill the settings the user left unset from BASE_MODEL_DEFAULTS and,
        when the validation context carries them (``{"checkpoint_defaults": ...}``, see
        `checkpoint_defaults`), from the checkpoint's family; without it, from the pixel model's
        PREDICTION_DEFAULTS."""
        if not isinstance(values, dict):
            return values
        model = values.get("model")
        base = model.get("base") if isinstance(model, dict) else getattr(model, "base", None)
        given_train = _given(values, "train")
        values = _feature_pool_default(_latent_factor_default(values, base), base)
        if base is None:
            return _min_steps_under_cap(_square_crops_default(_prediction_defaults(values, model)), given_train)
        family = (info.context or {}).get("checkpoint_defaults") or {}
        out = dict(values)
        for section in sorted(set(BASE_MODEL_DEFAULTS) | set(family)):
            out[section] = {**BASE_MODEL_DEFAULTS.get(section, {}), **family.get(section, {}), **_given(out, section)}
        return _min_steps_under_cap(out, given_train)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        p = self.rank.patch_size
        if p is not None and p > self.data.resolution:
            raise ValueError(
                f"rank.patch_size ({p}) is larger than the working image (data.resolution={self.data.resolution})"
            )
        if self.embed.size > self.data.resolution:
            raise ValueError(
                f"embed.size ({self.embed.size}) is larger than the working image (data.resolution={self.data.resolution})"
            )
        if self.embed.method == "diffusion" and self.data.labels == "clusters":
            raise ValueError(
                "embed.method='diffusion' with data.labels='clusters' is circular: the diffusion features need the "
                "model fine-tuned on the labels, and the labels would come from clustering those features; choose "
                "embed.method pca, autoencoder, vae or clip"
            )
        if self.model.base is None and self.score.compare_base:
            raise ValueError(
                "score.compare_base needs model.base: it scores with the checkpoint before fine-tuning (the pixel "
                "model has none)"
            )
        if self.train.square_crops and (self.model.base is not None or self.data.resize != "short_side"):
            raise ValueError(
                "train.square_crops applies to the pixel model's aspect-kept working images: set data.resize=short_side "
                "and leave model.base unset (square working images are their own crop)"
            )
        if self.model.base is None and self.model.class_map is not None:
            raise ValueError(
                f"model.class_map ({self.model.class_map!r}) needs model.base: it maps labels to a checkpoint's classes"
            )
        if self.data.bucket is not None and self.data.bucket % self.downsampling_factor:
            raise ValueError(
                f"data.bucket ({self.data.bucket}) must be a multiple of {self.downsampling_factor}, the model's "
                "downsampling factor (every working side must be one)"
            )
        if self.model.base is not None:
            if self.model.prediction != "epsilon":
                raise ValueError(
                    f"model.prediction ({self.model.prediction!r}) applies to the pixel model: model.base trains and "
                    "scores in its checkpoint's own parametrisation (read from its scheduler config)"
                )
            if self.data.resolution % 8:
                raise ValueError(
                    f"data.resolution ({self.data.resolution}) must be a multiple of 8 with model.base (VAE latents)"
                )
            # the checkpoint's feature blocks are unknown here: the flow checks rank.feature_block (and
            # embed.diffusion_block) against model.base's configs before any work (tasks.latents.check_base)
            return self
        if self.train.lora_rank:
            raise ValueError(
                f"train.lora_rank ({self.train.lora_rank}) needs model.base: LoRA adapts a pretrained UNet"
            )
        levels = len(self.model.block_out_channels)
        if self.data.resolution % self.downsampling_factor:
            latent = self.model.latent_factor
            raise ValueError(
                f"data.resolution ({self.data.resolution}) must be divisible by {self.downsampling_factor} "
                f"for a UNet with {levels} levels (model.block_out_channels)"
                + (f" on latents {latent} times smaller (model.latent_factor)" if latent > 1 else "")
            )
        if not -levels <= self.rank.feature_block < levels:
            raise ValueError(
                f"rank.feature_block ({self.rank.feature_block}) must index one of the {levels} decoder blocks "
                f"(from {-levels} to {levels - 1})"
            )
        return self

    @property
    def downsampling_factor(self) -> int:
        """What every working side must be a multiple of: 8 (VAE latents) with model.base,
        2^(levels - 1) for the small pixel UNet (model.block_out_channels), whose every level halves
        the image."""
        if self.model.base is not None:
            return 8
        return self.model.latent_factor * 2 ** (len(self.model.block_out_channels) - 1)

    @property
    def working_multiple(self) -> int:
        """What the long side of a working image is rounded to under data.resize=short_side:
        `data.bucket` when set (64 with model.base), but at most an eighth of data.resolution (in
        whole downsampling factors), so that no aspect ratio changes by more than ~6 %
        (benchmarks/shape_buckets.py); else the model's `downsampling_factor`."""
        factor = self.downsampling_factor
        if not self.data.bucket:
            return factor
        return max(factor, min(self.data.bucket, self.data.resolution // 8 // factor * factor))

    @property
    def patch_size(self) -> int:
        """Patch side in working pixels (the paper's 50/256 of the image side by default)."""
        if self.rank.patch_size is not None:
            return self.rank.patch_size
        return max(2, round(0.2 * self.data.resolution))

    @classmethod
    def from_dict(cls, values: dict, checkpoint_defaults: dict | None = None) -> Settings:
        """Validate nested `values` (with model.base, unset settings take `checkpoint_defaults` over
        BASE_MODEL_DEFAULTS); raise `ConfigError` naming every bad field."""
        try:
            return cls.model_validate(values, context={"checkpoint_defaults": checkpoint_defaults or {}})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err)) from None


MASK = "**********"


def secret_fields() -> set[tuple[str, str]]:
    """(section, field) of every secret setting (typed SecretStr): never echoed, printed or logged."""
    found = set()
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)  # every section is a pydantic model
        for name, field in model.model_fields.items():
            if "SecretStr" in str(field.annotation):
                found.add((section, name))
    return found


def may_hold_secret(loc: tuple | list) -> bool:
    """Whether the value at settings path `loc` may be a secret: a secret field, the storage
    section as a whole, or a field of it gcmine does not know (a misspelt `secret`)."""
    parts = [str(p) for p in loc]
    if not parts or parts[0] != "storage":
        return False
    if len(parts) == 1:
        return True
    known = set(StorageConfig.model_fields) - {name for _, name in secret_fields()}
    return parts[1] not in known


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {MASK if may_hold_secret(e['loc']) else repr(got)})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"{field}: {msg}{got_txt}" if field else msg)
    return "invalid configuration:\n  " + "\n  ".join(lines)
