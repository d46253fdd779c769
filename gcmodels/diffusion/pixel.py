"""The embedded default: a small class-conditional pixel-space diffusion model.

`PixelDiffusion` is a diffusers `UNet2DModel` whose class embedding carries the label (index 0 is
the null label, label ``i`` of the vocabulary is index ``i + 1``; a label set of a multi-label
image is the multi-hot sum of its labels' embeddings, `SetEmbedding`), trained from scratch with label
dropout so that one network is both the conditional and the unconditional model. It is one
implementation of `ConditionalDiffusion`, in any of the three parametrisations
(``model.prediction``): epsilon (DDPM, the default), v_prediction, or flow_matching (rectified
flow; its noise levels are read on the same DDPM schedule, matched by signal-to-noise ratio, see
`gcmodels.diffusion.parametrisation`).

With an `autoencoder` (``model.latent_factor`` > 1, a `CollectionAutoencoder` learnt on the
collection) the same UNet denoises the autoencoder's standardised latents instead of the pixels
(a shallow latent diffusion model): ``encode`` returns latents on a grid `latent_factor` times
smaller than the working image, the maps are on that grid (as a checkpoint family's are), and
``decode`` turns samples back into images. `resolution` is always the working image's side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from gcmodels.diffusion.autoencoder import CollectionAutoencoder
from gcmodels.diffusion.base import (
    NULL_LABEL,
    ConditionalDiffusion,
    split_vocabulary,
    to_uint8,
    validate_label_vocabulary,
)
from gcmodels.diffusion.parametrisation import PREDICTIONS

__all__ = ["NULL_LABEL", "PixelDiffusion", "SetEmbedding", "validate_label_vocabulary"]

_META = "gcmine_model.json"
_AUTOENCODER = "autoencoder"


class SetEmbedding(nn.Embedding):
    """The UNet's class embedding extended to label sets: indices 0 .. L are the table's rows (the
    null label and the single labels); index L + 1 + j is ``members[j] @ weight[: L + 1]``, the sum of the
    embeddings of set j's labels (a multi-hot label embedding). Its parameter is the plain
    embedding's `weight` (same name, same state dict): a saved UNet is a plain diffusers one."""

    members: Tensor

    def __init__(self, plain: nn.Embedding, members: Tensor) -> None:
        super().__init__(plain.num_embeddings, plain.embedding_dim, _weight=plain.weight)
        self.weight = plain.weight  # the same Parameter (not a copy): optimisers and EMA see one tensor
        self.register_buffer("members", members.to(plain.weight.device), persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        table = self.weight[: self.members.shape[1]]  # (L + 1, dim)
        return F.embedding(idx, torch.cat([table, self.members.to(table.dtype) @ table]))


class PixelDiffusion(ConditionalDiffusion):
    """A class-conditional pixel-space diffusion model with a label vocabulary.

    `scheduler` is the DDPM schedule (the model's own for epsilon / v_prediction, the reference its
    noise levels are read on for flow_matching); `prediction` None = the scheduler's prediction_type;
    `autoencoder` (frozen here: it is trained before the UNet, see `train_collection_autoencoder`) makes the
    UNet work on its latents, whose channels must be the UNet's."""

    family = "pixel"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        labels: Sequence[str],
        prediction: str | None = None,
        autoencoder: CollectionAutoencoder | None = None,
    ) -> None:
        labels = validate_label_vocabulary(labels)
        if prediction is None:
            prediction = scheduler.config.get("prediction_type", "epsilon")
        super().__init__(labels, torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), prediction)
        n_embeds = unet.config.num_class_embeds
        if n_embeds is None or n_embeds < len(self.labels) + 1:
            raise ValueError(
                f"the UNet has {n_embeds} class embeddings but {len(self.labels)} labels + the null label need "
                f"{len(self.labels) + 1}"
            )
        channels = autoencoder.channels if autoencoder is not None else 3
        if unet.config.in_channels != channels or unet.config.out_channels != channels:
            what = f"the autoencoder's {channels} latent channels" if autoencoder is not None else "3 (RGB)"
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} channels in and {unet.config.out_channels} out, not {what}"
            )
        if self.label_sets and not isinstance(unet.class_embedding, SetEmbedding):
            unet.class_embedding = SetEmbedding(unet.class_embedding, self.set_members())
        self.unet = unet
        self.scheduler = scheduler
        self.autoencoder = autoencoder.eval().requires_grad_(False) if autoencoder is not None else None

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def create(
        cls,
        labels: Sequence[str],
        *,
        resolution: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        num_train_timesteps: int,
        beta_schedule: str,
        prediction: str = "epsilon",
        generator: torch.Generator | None = None,
        latent_factor: int = 1,
        latent_channels: int = 4,
        autoencoder_width: int = 32,
    ) -> PixelDiffusion:
        """A freshly initialised model for `labels` (the single labels, then any label sets, see
        `ConditionalDiffusion.conditions`) at `resolution` x `resolution` RGB; with `latent_factor`
        > 1 an untrained `CollectionAutoencoder` (`latent_channels`, `autoencoder_width`) and a UNet
        on its (resolution / latent_factor)-side grid."""
        labels = validate_label_vocabulary(labels)
        singles, _ = split_vocabulary(labels)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        levels = len(block_out_channels)
        multiple = latent_factor * 2 ** (levels - 1)
        if resolution % multiple:
            raise ValueError(
                f"resolution {resolution} is not divisible by {multiple} ({levels} UNet levels"
                + (f" on latents {latent_factor} times smaller)" if latent_factor > 1 else ")")
            )
        groups = _norm_groups(block_out_channels)

        def build() -> tuple[UNet2DModel, CollectionAutoencoder | None]:
            ae = None
            if latent_factor > 1:
                ae = CollectionAutoencoder(latent_channels, latent_factor, autoencoder_width)
            channels = 3 if ae is None else latent_channels
            side = resolution // latent_factor
            return cls._build_unet(singles, side, block_out_channels, layers_per_block, groups, channels), ae

        if generator is not None:
            # diffusers initialises from the global RNG; fork it so the caller's state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                unet, autoencoder = build()
        else:
            unet, autoencoder = build()
        scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type="v_prediction" if prediction == "v_prediction" else "epsilon",
        )
        return cls(unet, scheduler, labels, prediction, autoencoder)

    @staticmethod
    def _build_unet(labels, resolution, block_out_channels, layers_per_block, groups, channels=3) -> UNet2DModel:
        levels = len(block_out_channels)
        return UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=False,
            norm_num_groups=groups,
            num_class_embeds=len(labels) + 1,
        )

    def save(self, directory: str | Path) -> None:
        """Write a diffusers layout (``unet/``, ``scheduler/``) plus the label vocabulary and the
        parametrisation, and the autoencoder (``autoencoder/``) of a latent pixel model."""
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        self.scheduler.save_pretrained(directory / "scheduler")
        meta = {
            "kind": "pixel",
            "labels": list(self.conditions),
            "resolution": self.resolution,
            "prediction": self.prediction,
        }
        if self.autoencoder is not None:
            self.autoencoder.save(directory / _AUTOENCODER)
            meta["autoencoder"] = self.autoencoder.config
        (directory / _META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> PixelDiffusion:
        directory = Path(directory)
        meta_path = directory / _META
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} is not a gcmine model directory: {_META} is missing")
        meta = json.loads(meta_path.read_text())
        unet = UNet2DModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        autoencoder = CollectionAutoencoder.load(directory / _AUTOENCODER) if "autoencoder" in meta else None
        return cls(unet, scheduler, meta["labels"], meta.get("prediction"), autoencoder)

    # ------------------------------------------------------------------ properties
    @property
    def network(self) -> nn.Module:
        return self.unet

    @property
    def resolution(self) -> int:
        """The side of the working images (the UNet's grid times `latent_factor`)."""
        return int(self.unet.config.sample_size) * self.latent_factor

    @property
    def latent_space(self) -> bool:
        """Whether the UNet works on an autoencoder's latents (samples need `decode`)."""
        return self.autoencoder is not None

    @property
    def latent_factor(self) -> int:
        """Working pixels per side of one cell of the UNet's grid (1 in pixel space)."""
        return 1 if self.autoencoder is None else self.autoencoder.factor

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ------------------------------------------------------------------ the network
    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> model space x0, float32: in [-1, 1] (B, 3, H, W), or the
        autoencoder's standardised latents (B, C, H / f, W / f)."""
        if self.autoencoder is not None:
            return self.autoencoder.encode(images).to(self.device)
        if images.dtype != torch.uint8:
            raise TypeError(f"encode expects uint8 images, got {images.dtype}")
        return images.to(self.device, torch.float32).div_(127.5).sub_(1.0)

    def decode(self, x: Tensor) -> Tensor:
        """Model space -> uint8 images (B, 3, H, W): the autoencoder's decoder, or [-1, 1] clipped
        and quantised (the inverse of `encode` up to the autoencoder's reconstruction error)."""
        if self.autoencoder is not None:
            return self.autoencoder.decode(x)
        return to_uint8(x)

    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """The UNet's output (eps, v or flow velocity) under class indices `cond` (0 = null)."""
        return self.unet(x, timestep, class_labels=cond).sample

    def feature_blocks(self) -> Sequence[nn.Module]:
        """The UNet's decoder blocks (``up_blocks``)."""
        return self.unet.up_blocks


def _norm_groups(block_out_channels: Sequence[int]) -> int:
    """Most GroupNorm groups (<= 32) dividing every level with at least 4 channels per group."""
    for g in (32, 16, 8, 4, 2):
        if all(c % g == 0 for c in block_out_channels) and min(block_out_channels) // g >= 4:
            return g
    return 1
