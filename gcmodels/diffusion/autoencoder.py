"""A small autoencoder learnt on the collection: the latent space of the shallow latent pixel model.

`CollectionAutoencoder` maps working images to a grid `factor` times smaller with `channels`
values per cell, and back. The pixel model (`PixelDiffusion`, ``model.latent_factor`` > 1) runs
its UNet on these latents instead of on the pixels, so the denoiser keeps the cost of a small
grid while each cell carries the detail of `factor` x `factor` working pixels: at a working
resolution of 64 and factor 2 (the defaults) the UNet sees a 32 x 32 grid, as a 32 px pixel model
does, but a part of 4 % of the image side still spans about 2.5 working pixels instead of 1.3
(benchmarks/RESULTS.md 12h-12j: rank-0 on an own part 0.65 against 0.42 on the parts set).

The network is plain convolutions (no normalisation, no attention, a receptive field of a few
pixels): a 3x3 convolution at full resolution, one 4x4 stride-2 convolution per factor of 2, a
3x3 convolution and a 1x1 projection to the latent channels; the decoder mirrors it with
transposed convolutions. It is trained by mean squared error on random crops of the working
images (`train_collection_autoencoder`): being convolutional it then encodes images of any size that is a
multiple of `factor` (aspect-kept working images included). Its latents are standardised per
channel over the collection (``mean`` and ``std`` buffers, `fit_standardisation`), so that the
diffusion model's noise schedule sees unit-variance data as it does on pixels in [-1, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gcmodels.diffusion.base import to_uint8

__all__ = ["AutoencoderResult", "CollectionAutoencoder", "train_collection_autoencoder"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"


class CollectionAutoencoder(nn.Module):
    """uint8 images (B, 3, H, W) <-> standardised latents (B, channels, H / factor, W / factor).

    `factor` is a power of 2 (>= 2), `width` the convolutions' channels. Until
    `fit_standardisation` has run, ``mean`` is 0 and ``std`` 1 (raw latents)."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int = 4, factor: int = 2, width: int = 32) -> None:
        super().__init__()
        downs = int(round(math.log2(factor))) if factor >= 1 else -1
        if factor < 2 or 2**downs != factor:
            raise ValueError(f"the autoencoder's factor must be a power of 2 of at least 2, got {factor}")
        if channels < 1 or width < 1:
            raise ValueError(f"the autoencoder needs channels and width >= 1, got {channels} and {width}")
        self.channels, self.factor, self.width = int(channels), int(factor), int(width)
        enc: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
        dec: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(downs):
            enc += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
            dec += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        enc += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, channels, 1)]
        dec += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @property
    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "factor": self.factor, "width": self.width}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _check_images(self, images: Tensor) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"encode expects uint8 images, got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images (B, 3, H, W), got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not a multiple of the autoencoder's factor {self.factor}")

    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> standardised latents float32 (B, C, H / f, W / f) on the
        autoencoder's device, in fp32 whatever autocast is active (no gradient)."""
        self._check_images(images)
        x = _unit(images, self.device)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return (self.encoder(x) - self.mean) / self.std

    def decode(self, latents: Tensor) -> Tensor:
        """Standardised latents (B, C, h, w) -> uint8 images (B, 3, h f, w f) on the latents'
        device, clipped to [-1, 1] before quantising (no gradient)."""
        if latents.dim() != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"decode expects latents (B, {self.channels}, h, w), got shape {tuple(latents.shape)}")
        z = latents.detach().to(self.device, torch.float32)
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            x = self.decoder(z * self.std + self.mean)
        return to_uint8(x).to(latents.device)

    @torch.no_grad()
    def fit_standardisation(self, images: Sequence[Tensor], batch_size: int = 64) -> None:
        """Set ``mean`` and ``std`` to each latent channel's mean and standard deviation over every
        cell of `images` (uint8 tensors (B, 3, H, W), any number of shapes)."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        sq = torch.zeros(self.channels, dtype=torch.float64)
        count = 0
        for group in images:
            self._check_images(group)
            for start in range(0, len(group), batch_size):
                x = _unit(group[start : start + batch_size], self.device)
                z = self.encoder(x).double().cpu()
                total += z.sum(dim=(0, 2, 3))
                sq += (z * z).sum(dim=(0, 2, 3))
                count += z.shape[0] * z.shape[2] * z.shape[3]
        if count == 0:
            raise ValueError("fit_standardisation needs at least one image")
        mean = total / count
        var = (sq / count - mean * mean).clamp_min(1e-12)
        self.mean.copy_(mean.float().view(1, -1, 1, 1))
        self.std.copy_(var.sqrt().float().view(1, -1, 1, 1))

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path) -> None:
        """`directory`/config.json and model.safetensors (weights and the standardisation)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _CONFIG).write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / _WEIGHTS)

    @classmethod
    def load(cls, directory: str | Path) -> CollectionAutoencoder:
        directory = Path(directory)
        missing = [f for f in (_CONFIG, _WEIGHTS) if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a gcmine autoencoder directory: missing {', '.join(missing)}")
        ae = cls(**json.loads((directory / _CONFIG).read_text()))
        ae.load_state_dict(load_file(directory / _WEIGHTS))
        return ae.eval().requires_grad_(False)


def _unit(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images -> float32 in [-1, 1] on `device`."""
    return images.to(device, torch.float32).div_(127.5).sub_(1.0)


@dataclass
class AutoencoderResult:
    """What `train_collection_autoencoder` did: steps, crop side, mean squared error (on [-1, 1] pixels) of
    the last 100 steps, and every step's loss."""

    steps: int
    crop: int
    mse: float
    history: list[float] = field(default_factory=list)


def _crop_side(shapes: Sequence[tuple[int, ...]], crop: int | None, factor: int) -> int:
    """The training crop: `crop` (None = the smallest side) but at most the smallest side of any
    image, floored to a multiple of `factor`."""
    smallest = min(min(s) for s in shapes)
    side = smallest if crop is None else min(int(crop), smallest)
    side -= side % factor
    if side < factor:
        raise ValueError(f"the autoencoder needs images of at least {factor} px a side, the smallest is {smallest}")
    return side


def train_collection_autoencoder(
    autoencoder: CollectionAutoencoder,
    images: Tensor | Sequence[Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    crop: int | None,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
) -> AutoencoderResult:
    """Train `autoencoder` in place on uint8 images ((N, 3, H, W), or a sequence of (3, H, W) of
    any sizes), then fit its standardisation on every image and freeze it (eval, no gradient).

    Each step takes `batch_size` images drawn with replacement (from `generator`), one random
    `crop` x `crop` window of each (see `_crop_side`; whole images when they are that size) and a
    random horizontal flip, and minimises the mean squared reconstruction error with Adam at `lr`,
    decayed by a cosine to lr / 10. `on_step(step, loss)` follows the training."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"train_collection_autoencoder needs steps, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}"
        )
    pool = list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
    if not pool:
        raise ValueError("train_collection_autoencoder needs at least one image")
    if any(im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != 3 for im in pool):
        raise ValueError("train_collection_autoencoder expects uint8 images (3, H, W)")
    side = _crop_side([tuple(im.shape[-2:]) for im in pool], crop, autoencoder.factor)
    device = autoencoder.device
    autoencoder.requires_grad_(True).train()
    opt = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    history: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch_size,), generator=generator).tolist()
        draws = torch.rand(batch_size, 3, generator=generator).tolist()
        batch = []
        for i, (u, v, flip) in zip(idx, draws):
            im = pool[i]
            top = int(u * (im.shape[-2] - side + 1))
            left = int(v * (im.shape[-1] - side + 1))
            win = im[:, top : top + side, left : left + side]
            batch.append(win.flip(-1) if flip < 0.5 else win)
        x = _unit(torch.stack(batch), device)
        loss = F.mse_loss(autoencoder.decoder(autoencoder.encoder(x)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, history[-1])
    autoencoder.eval().requires_grad_(False)
    by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for im in pool:
        by_shape.setdefault(tuple(im.shape), []).append(im)
    autoencoder.fit_standardisation([torch.stack(g) for g in by_shape.values()])
    return AutoencoderResult(steps, side, float(np.mean(history[-100:])), history)
