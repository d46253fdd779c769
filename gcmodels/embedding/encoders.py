"""Image encoders for the embed stage, behind one interface, and the factory that picks one.

Every encoder has

- ``fit(images)``: images (N, H, W, 3) uint8; trains (autoencoders), loads (CLIP) or only
  checks (PCA is fitted, diffusion features need no fitting). Returns self.
- ``transform(images) -> (N, D) float32``.
- ``fits_on_collection`` (class attribute): whether ``fit`` learns from the images (PCA and
  the autoencoders: one global fit over the whole collection, so the embed stage cannot be split
  over shards) or not (CLIP, diffusion features: ``transform`` is the whole cost and images can
  be embedded shard by shard with the same result).
- ``describe() -> dict``: what it is, for the artifact metadata: ``encoder`` (its name), ``dim``,
  and what makes it reproducible (thumbnail size, training epochs / batch / lr / seed and the
  final loss, the CLIP source directory, the diffusion timestep and block).

The encoders:

=============  ==============================  =====================================================
method         class                           embedding
=============  ==============================  =====================================================
pca            `PixelPCAEncoder`               PCA of standardised pixel thumbnails (no weights)
autoencoder    `ConvAutoencoderEncoder`        code of a conv autoencoder trained on the collection
vae            `ConvVAEEncoder`                posterior mean of a conv VAE trained on the collection
clip           `CLIPImageEncoder`              projected CLIP image embedding (local directory)
diffusion      `DiffusionFeatureEncoder`       feature-block activations of the fine-tuned model, grid-pooled
=============  ==============================  =====================================================

`make_encoder(config)` builds the one an `EmbedConfig` names.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from gcmodels.config import EmbedConfig
from gcmodels.diffusion import NULL_LABEL, ConditionalDiffusion, PixelDiffusion
from gcmodels.embedding.autoencoders import ConvAutoencoder, build_seeded, train_autoencoder
from gcmodels.embedding.pca import PixelPCAEncoder, _check_images, _thumbnails

__all__ = [
    "ENCODERS",
    "CLIPImageEncoder",
    "ConvAutoencoderEncoder",
    "ConvVAEEncoder",
    "DiffusionFeatureEncoder",
    "PixelPCAEncoder",
    "fits_on_collection",
    "make_encoder",
]


def _check_positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__
            raise ValueError(f"{owner}: {name} must be positive, got {value!r}")
        if name not in ("lr", "beta") and not isinstance(value, numbers.Integral):
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# autoencoders trained on the collection
# --------------------------------------------------------------------------------------------


class ConvAutoencoderEncoder(TransformerMixin, BaseEstimator):
    """Code of a small convolutional autoencoder (`ConvAutoencoder`) trained on the collection.

    Images are area-resized to (size, size) thumbnails, scaled to [-1, 1], and the network is
    trained by Adam on the mean squared reconstruction error for `epochs` passes.

    Parameters
    ----------
    n_components : embedding dimension (the code size).
    size : thumbnail side, a multiple of 4.
    epochs, batch_size, lr : training passes, images per step, Adam learning rate.
    width : channels of the first convolution (the second has twice as many).
    seed : seeds the initial weights and the batch order.
    device : torch device for training and inference.

    Attributes
    ----------
    model_ : the trained `ConvAutoencoder`. history_ : list of {"epoch", "loss", "seconds"}.
    n_components_ : int, the embedding dimension.
    """

    _name = "conv-autoencoder"
    _variational = False
    fits_on_collection = True  # trained on the images

    def __init__(
        self,
        n_components: int = 32,
        size: int = 16,
        *,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        width: int = 32,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.n_components = n_components
        self.size = size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.seed = seed
        self.device = device

    def _build(self) -> ConvAutoencoder:
        return ConvAutoencoder(int(self.size), int(self.n_components), width=int(self.width), variational=False)

    def _inputs(self, images: Any, min_images: int) -> torch.Tensor:
        """Validated images (n, H, W, 3) uint8 -> thumbnails (n, 3, size, size) float32 in [-1, 1]."""
        images = _check_images(images, type(self).__name__, min_images=min_images)
        s = int(self.size)
        return torch.from_numpy(_thumbnails(images, s)).view(-1, 3, s, s).mul_(2.0).sub_(1.0)

    def fit(self, images: Any, y: Any = None) -> ConvAutoencoderEncoder:
        """Train on images (n, H, W, 3) uint8. Returns self."""
        name = type(self).__name__
        _check_positive(
            name,
            n_components=self.n_components,
            size=self.size,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            width=self.width,
        )
        if self.size % 4:
            raise ValueError(f"{name}: size must be a multiple of 4 (two stride-2 convolutions), got {self.size}")
        x = self._inputs(images, min_images=1)
        device = torch.device(self.device)
        model = build_seeded(self._build, int(self.seed)).to(device)
        generator = torch.Generator().manual_seed(int(self.seed))
        self.history_ = train_autoencoder(
            model, x, epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr), generator=generator
        )
        self.model_ = model
        self.n_components_ = int(self.n_components)
        return self

    def transform(self, images: Any) -> np.ndarray:
        """Embed images (m, H, W, 3) uint8 -> (m, n_components) float32."""
        check_is_fitted(self)
        x = self._inputs(images, min_images=1)
        device = torch.device(self.device)
        out = np.empty((x.shape[0], self.n_components_), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, x.shape[0], 256):
                out[start : start + 256] = self.model_.encode(x[start : start + 256].to(device)).cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        """{"encoder", "dim", "size", "epochs", "batch_size", "lr", "seed", "loss", "final_loss", "parameters"}."""
        check_is_fitted(self)
        return {
            "encoder": self._name,
            "dim": int(self.n_components_),
            "size": int(self.size),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "lr": float(self.lr),
            "seed": int(self.seed),
            "loss": "elbo" if self._variational else "mse",
            "final_loss": float(self.history_[-1]["loss"]),
            "parameters": int(sum(p.numel() for p in self.model_.parameters())),
        }


class ConvVAEEncoder(ConvAutoencoderEncoder):
    """Posterior mean of a convolutional VAE trained on the collection (see `ConvAutoencoder`).

    Same parameters as `ConvAutoencoderEncoder`, plus ``beta``, the weight of the KL term of the
    negative ELBO that is minimised.
    """

    _name = "conv-vae"
    _variational = True

    def __init__(
        self,
        n_components: int = 32,
        size: int = 16,
        *,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        width: int = 32,
        beta: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            n_components, size, epochs=epochs, batch_size=batch_size, lr=lr, width=width, seed=seed, device=device
        )
        self.beta = beta

    def _build(self) -> ConvAutoencoder:
        return ConvAutoencoder(
            int(self.size), int(self.n_components), width=int(self.width), variational=True, beta=float(self.beta)
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": float(self.beta)}


# --------------------------------------------------------------------------------------------
# pretrained CLIP image encoder from a local directory
# --------------------------------------------------------------------------------------------


class CLIPImageEncoder(TransformerMixin, BaseEstimator):
    """Projected image embedding of a pretrained CLIP model read from a local directory.

    The directory is a transformers ``save_pretrained`` layout of a ``CLIPVisionModelWithProjection``
    or a full ``CLIPModel`` (its vision tower and projection are used) with the
    ``CLIPImageProcessor`` config beside it. Nothing is downloaded. ``fit`` loads the model;
    ``transform`` returns the ``image_embeds``, L2-normalised when `normalize` is true (CLIP's
    similarity is the cosine).

    Attributes
    ----------
    model_, processor_ : the loaded transformers objects. n_components_ : int, projection_dim.
    """

    fits_on_collection = False  # pretrained: fit only loads it

    def __init__(self, path: str, *, batch_size: int = 64, normalize: bool = True, device: str = "cpu") -> None:
        self.path = path
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device

    def fit(self, images: Any = None, y: Any = None) -> CLIPImageEncoder:
        """Load the model (images, if given, are only checked). Returns self."""
        name = type(self).__name__
        _check_positive(name, batch_size=self.batch_size)
        if images is not None:
            _check_images(images, name, min_images=1)
        directory = Path(self.path)
        if not (directory / "config.json").is_file():
            raise ValueError(f"{name}: {str(self.path)!r} is not a local CLIP model directory (no config.json in it)")
        try:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        except ModuleNotFoundError:
            raise ValueError(f"{name} needs transformers, which is not installed: pip install 'gcmine[clip]'") from None

        try:
            self.processor_ = CLIPImageProcessor.from_pretrained(directory, local_files_only=True)
        except OSError as err:
            raise ValueError(f"{name}: no CLIP image processor config in {str(self.path)!r} ({err})") from None
        model = CLIPVisionModelWithProjection.from_pretrained(directory, local_files_only=True)
        self.model_ = model.to(torch.device(self.device)).eval()  # type: ignore[arg-type]  # transformers types PreTrainedModel.to's wrapper as taking the model
        self.n_components_ = int(model.config.projection_dim)
        return self

    def transform(self, images: Any) -> np.ndarray:
        """Embed images (m, H, W, 3) uint8 -> (m, projection_dim) float32."""
        check_is_fitted(self)
        images = _check_images(images, type(self).__name__, min_images=1)
        device = torch.device(self.device)
        out = np.empty((images.shape[0], self.n_components_), dtype=np.float32)
        bs = int(self.batch_size)
        with torch.no_grad():
            for start in range(0, images.shape[0], bs):
                batch = list(images[start : start + bs])
                pixels = self.processor_(images=batch, return_tensors="pt")["pixel_values"].to(device)
                emb = self.model_(pixel_values=pixels).image_embeds.float()  # (B, projection_dim)
                if self.normalize:
                    emb = F.normalize(emb, dim=1)
                out[start : start + emb.shape[0]] = emb.cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        """{"encoder": "clip", "source", "dim", "model_type", "image_size", "normalized"}."""
        check_is_fitted(self)
        cfg = self.model_.config
        return {
            "encoder": "clip",
            "source": str(self.path),
            "dim": int(self.n_components_),
            "model_type": str(cfg.model_type),
            "image_size": int(cfg.image_size),
            "normalized": bool(self.normalize),
        }


# --------------------------------------------------------------------------------------------
# diffusion features of the fine-tuned model
# --------------------------------------------------------------------------------------------


class DiffusionFeatureEncoder(TransformerMixin, BaseEstimator):
    """Pooled activations of one feature block of a conditional diffusion model (DIFT-style
    diffusion features): a UNet decoder block, or a transformer block's image tokens on the
    latent grid (``ConditionalDiffusion.feature_blocks``; any family: the pixel model, SD 1.x/2.x,
    SDXL, SD3, DiT).

    Images are brought to the model's resolution where it has one (the pixel model: resized to
    `model.resolution`; a latent model takes the images at their size), encoded into model space
    (`model.encode`: a VAE's latents for a latent model), noised to timestep t = round(t_fraction
    * (T - 1)) of the reference schedule with `draws` noise images shared by every image (drawn
    from `seed` in model space), and passed through the network under the null label (the
    embedding does not see the labels); ``decoder_features`` averages the block's output
    (B, F, h, w) over the draws, and this encoder averages it over each cell of a grid x grid
    partition of (h, w) -> (B, F * grid^2), channel-major. grid = 1 is global average pooling
    (B, F); a coarse grid keeps where things are, which matters for shapes (on scikit-learn's
    digits the k-means NMI of a small model's features goes from 0.24 with grid 1 to 0.73 with
    grid 4).

    Attributes
    ----------
    n_components_ : int, F * grid^2 (F: the channels of that block); known after `fit` for the
        pixel model, after the first `transform` otherwise (None until then).
    """

    fits_on_collection = False  # the model is fitted already (fine-tuned); fit only checks

    def __init__(
        self,
        model: ConditionalDiffusion,
        *,
        t_fraction: float = 0.16,
        block: int = 0,
        grid: int = 4,
        draws: int = 2,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.t_fraction = t_fraction
        self.block = block
        self.grid = grid
        self.draws = draws
        self.batch_size = batch_size
        self.seed = seed

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_positive(name, grid=self.grid, draws=self.draws, batch_size=self.batch_size)
        if not isinstance(self.t_fraction, numbers.Real) or not 0 <= self.t_fraction <= 1:
            raise ValueError(f"{name}: t_fraction must be in [0, 1], got {self.t_fraction!r}")
        n_blocks = len(self.model.feature_blocks())
        if not isinstance(self.block, numbers.Integral) or not -n_blocks <= self.block < n_blocks:
            raise ValueError(
                f"{name}: block {self.block!r} out of range: the {self.model.block_kind} has {n_blocks} "
                f"{self.model.block_name}s"
            )

    @property
    def timestep(self) -> int:
        return int(round(float(self.t_fraction) * (self.model.num_train_timesteps - 1)))

    def fit(self, images: Any = None, y: Any = None) -> DiffusionFeatureEncoder:
        """Check the parameters and, for the pixel model, find the feature dimension (images, if
        given, are only checked)."""
        self._check_params()
        if images is not None:
            _check_images(images, type(self).__name__, min_images=1)
        self.n_components_: int | None = None
        if isinstance(self.model, PixelDiffusion):  # up_blocks[i] outputs reversed(channels)[i] channels
            channels = self.model.unet.config.block_out_channels
            self.n_components_ = int(tuple(reversed(channels))[self.block]) * int(self.grid) ** 2
        return self

    def transform(self, images: Any) -> np.ndarray:
        """Embed images (m, H, W, 3) uint8 -> (m, F) float32."""
        check_is_fitted(self)
        images = _check_images(images, type(self).__name__, min_images=1)
        model = self.model
        res = getattr(model, "resolution", None)  # the pixel model's working size; latent models take any
        generator = torch.Generator().manual_seed(int(self.seed))
        noise: torch.Tensor | None = None  # (D, C, h, w) in model space, drawn at the first batch
        parts = []
        bs = int(self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, images.shape[0], bs):
                    x = torch.from_numpy(np.ascontiguousarray(images[start : start + bs])).permute(
                        0, 3, 1, 2
                    )  # (B, 3, H, W)
                    if res is not None and x.shape[-2:] != (res, res):
                        x = (
                            F.interpolate(x.float(), size=(res, res), mode="area")
                            .round_()
                            .clamp_(0, 255)
                            .to(torch.uint8)
                        )
                    x0 = model.encode(x)
                    if noise is None:
                        noise = torch.randn((int(self.draws), *x0.shape[1:]), generator=generator).to(model.device)
                    cond = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=model.device)
                    feat = model.decoder_features(x0, cond, self.timestep, noise, int(self.block))
                    pooled = F.adaptive_avg_pool2d(feat, int(self.grid))  # (B, F, grid, grid)
                    parts.append(pooled.flatten(1).float().cpu().numpy())
        finally:
            model.train(was_training)
        out = np.concatenate(parts).astype(np.float32, copy=False)
        if self.n_components_ is not None and out.shape[1] != self.n_components_:
            raise RuntimeError(f"features of {out.shape[1]} dimensions, expected {self.n_components_}")
        self.n_components_ = int(out.shape[1])
        return out

    def describe(self) -> dict[str, Any]:
        """{"encoder": "diffusion-features", "dim", "timestep", "t_fraction", "block", "grid", "draws", "seed",
        "resolution", "family", "labels"} (dim None before the first transform of a latent model;
        resolution None for a latent model, which takes the images at their size)."""
        check_is_fitted(self)
        res = getattr(self.model, "resolution", None)
        return {
            "encoder": "diffusion-features",
            "dim": None if self.n_components_ is None else int(self.n_components_),
            "timestep": self.timestep,
            "t_fraction": float(self.t_fraction),
            "block": int(self.block),
            "grid": int(self.grid),
            "draws": int(self.draws),
            "seed": int(self.seed),
            "resolution": None if res is None else int(res),
            "family": self.model.family,
            "labels": list(self.model.labels),
        }


# --------------------------------------------------------------------------------------------
# the factory
# --------------------------------------------------------------------------------------------

ENCODERS = ("pca", "autoencoder", "vae", "clip", "diffusion")
_CLASSES: dict[str, type[Any]] = {
    "pca": PixelPCAEncoder,
    "autoencoder": ConvAutoencoderEncoder,
    "vae": ConvVAEEncoder,
    "clip": CLIPImageEncoder,
    "diffusion": DiffusionFeatureEncoder,
}


def fits_on_collection(method: str) -> bool:
    """Whether the encoder `method` names is fitted on the whole collection (see the module doc):
    then embedding is one global job; otherwise each image's embedding depends on that image only."""
    if method not in _CLASSES:
        raise ValueError(f"fits_on_collection: unknown embed.method {method!r}; expected one of {ENCODERS}")
    return bool(_CLASSES[method].fits_on_collection)


def make_encoder(config: EmbedConfig, *, diffusion: ConditionalDiffusion | None = None, device: str = "cpu") -> Any:
    """The (unfitted) encoder an `EmbedConfig` names.

    `diffusion` is the fine-tuned model (any family), required by ``method="diffusion"`` (and
    rejected otherwise, so that a wiring mistake is loud); `device` is where the torch encoders
    run (the diffusion encoder runs where its model is).
    """
    method = config.method
    if diffusion is not None and method != "diffusion":
        raise ValueError(f"make_encoder: a diffusion model was passed but embed.method is {method!r}")
    if method == "pca":
        return PixelPCAEncoder(n_components=config.dim, size=config.size)
    if method in ("autoencoder", "vae"):
        common: dict[str, Any] = dict(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            width=config.width,
            seed=config.seed,
            device=device,
        )
        if method == "vae":
            return ConvVAEEncoder(config.dim, config.size, beta=config.beta, **common)
        return ConvAutoencoderEncoder(config.dim, config.size, **common)
    if method == "clip":
        if config.clip_path is None:  # EmbedConfig rejects this already; kept for hand-built configs
            raise ValueError("make_encoder: embed.method='clip' needs embed.clip_path (a local CLIP directory)")
        return CLIPImageEncoder(config.clip_path, batch_size=config.batch_size, device=device)
    if method == "diffusion":
        if diffusion is None:
            raise ValueError(
                "make_encoder: embed.method='diffusion' needs the fine-tuned model (diffusion=ConditionalDiffusion)"
            )
        return DiffusionFeatureEncoder(
            diffusion,
            t_fraction=config.diffusion_t,
            block=config.diffusion_block,
            grid=config.diffusion_grid,
            draws=config.diffusion_draws,
            batch_size=config.batch_size,
            seed=config.seed,
        )
    raise ValueError(f"make_encoder: unknown embed.method {method!r}; expected one of {ENCODERS}")
