"""Conditional diffusion models behind one interface.

`PixelDiffusion` is the embedded default: a small pixel-space diffusers `UNet2DModel` whose class
embedding carries the label (index 0 is the null label, label ``i`` of the vocabulary is index
``i + 1``), trained from scratch with label dropout so that one network is both the conditional
and the unconditional model.

Everything the typicality estimator, the trainer and the patch features need is here:
``encode`` (images -> model space), ``add_noise`` (DDPM forward process), ``predict_noise``
(eps-prediction under a label index) and ``decoder_features`` (DIFT-style activations).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

__all__ = ["NULL_LABEL", "PixelDiffusion", "validate_label_vocabulary"]

NULL_LABEL = 0
_META = "gcmine_model.json"


def validate_label_vocabulary(labels: Sequence[str]) -> tuple[str, ...]:
    """Return `labels` as a tuple after checking they are distinct non-empty strings."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("a conditional model needs at least one label, got none")
    bad = [lab for lab in labels if not isinstance(lab, str) or not lab.strip()]
    if bad:
        raise ValueError(f"labels must be non-empty strings, got {bad[:5]!r}")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ValueError(f"labels must be distinct, repeated: {dup[:5]!r}")
    return labels


class PixelDiffusion(nn.Module):
    """A class-conditional pixel-space DDPM (eps-prediction) with a label vocabulary."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, labels: Sequence[str]) -> None:
        super().__init__()
        self.labels = validate_label_vocabulary(labels)
        n_embeds = unet.config.num_class_embeds
        if n_embeds is None or n_embeds < len(self.labels) + 1:
            raise ValueError(
                f"the UNet has {n_embeds} class embeddings but {len(self.labels)} labels + the null label need "
                f"{len(self.labels) + 1}"
            )
        self.unet = unet
        self.scheduler = scheduler
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), persistent=False
        )

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
        generator: torch.Generator | None = None,
    ) -> "PixelDiffusion":
        """A freshly initialised model for `labels` at `resolution` x `resolution` RGB."""
        labels = validate_label_vocabulary(labels)
        levels = len(block_out_channels)
        if resolution % (2 ** (levels - 1)):
            raise ValueError(
                f"resolution {resolution} is not divisible by {2 ** (levels - 1)} ({levels} UNet levels)"
            )
        groups = _norm_groups(block_out_channels)
        if generator is not None:
            # diffusers initialises from the global RNG; fork it so the caller's state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                unet = cls._build_unet(labels, resolution, block_out_channels, layers_per_block, groups)
        else:
            unet = cls._build_unet(labels, resolution, block_out_channels, layers_per_block, groups)
        scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        return cls(unet, scheduler, labels)

    @staticmethod
    def _build_unet(labels, resolution, block_out_channels, layers_per_block, groups) -> UNet2DModel:
        levels = len(block_out_channels)
        return UNet2DModel(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=False,
            norm_num_groups=groups,
            num_class_embeds=len(labels) + 1,
        )

    def save(self, directory: str | Path) -> None:
        """Write a diffusers layout (``unet/``, ``scheduler/``) plus the label vocabulary."""
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        self.scheduler.save_pretrained(directory / "scheduler")
        meta = {"kind": "pixel", "labels": list(self.labels), "resolution": self.resolution}
        (directory / _META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> "PixelDiffusion":
        directory = Path(directory)
        meta_path = directory / _META
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} is not a gcmine model directory: {_META} is missing")
        meta = json.loads(meta_path.read_text())
        unet = UNet2DModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        return cls(unet, scheduler, meta["labels"])

    # ------------------------------------------------------------------ properties
    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def label_index(self, labels: Sequence[str | None]) -> Tensor:
        """Label strings -> class indices (B,) long; None -> the null label 0."""
        lookup = {lab: i + 1 for i, lab in enumerate(self.labels)}
        unknown = sorted({lab for lab in labels if lab is not None and lab not in lookup})
        if unknown:
            raise ValueError(f"labels unknown to the model: {unknown[:5]!r}; the model knows {list(self.labels)[:10]!r}")
        return torch.tensor([NULL_LABEL if lab is None else lookup[lab] for lab in labels], dtype=torch.long)

    # ------------------------------------------------------------------ diffusion math
    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> model space x0 in [-1, 1], float32 (B, 3, H, W)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"encode expects uint8 images, got {images.dtype}")
        return images.to(self.device, torch.float32).div_(127.5).sub_(1.0)

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """DDPM forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. t: (B,) long."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps_theta(x_t, t, c): x_t (B, C, H, W), t (B,) long, cond (B,) long (0 = null) -> (B, C, H, W)."""
        return self.unet(x_t, t, class_labels=cond).sample

    def training_loss(self, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample eps-prediction MSE with t uniform over the schedule: (B,)."""
        b = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device="cpu").to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
        pred = self.predict_noise(self.add_noise(x0, eps, t), t, cond)
        return (pred.float() - eps).pow(2).flatten(1).mean(1)

    def decoder_features(self, x0: Tensor, cond: Tensor, t: int, noise: Tensor, block: int) -> Tensor:
        """Decoder activations (DIFT): output of ``unet.up_blocks[block]`` (negative = from the end)
        at timestep `t`, averaged over the noise draws `noise` (D, C, H, W).
        x0 (B, C, H, W), cond (B,) -> (B, F, h, w)."""
        if not -len(self.unet.up_blocks) <= block < len(self.unet.up_blocks):
            raise ValueError(f"feature block {block} out of range: the UNet has {len(self.unet.up_blocks)} decoder blocks")
        captured: list[Tensor] = []
        handle = self.unet.up_blocks[block].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            total: Tensor | None = None
            tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
            for eps in noise:
                captured.clear()
                self.predict_noise(self.add_noise(x0, eps.expand_as(x0), tt), tt, cond)
                feat = captured[0].float()
                total = feat if total is None else total + feat
        finally:
            handle.remove()
        assert total is not None  # noise has at least one draw (checked by callers)
        return total / noise.shape[0]


def _norm_groups(block_out_channels: Sequence[int]) -> int:
    """Most GroupNorm groups (<= 32) dividing every level with at least 4 channels per group."""
    for g in (32, 16, 8, 4, 2):
        if all(c % g == 0 for c in block_out_channels) and min(block_out_channels) // g >= 4:
            return g
    return 1
