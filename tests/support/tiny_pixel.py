"""The tiny pixel diffusion model the model-level tests build: two labels, a 2-level UNet,
100 linear-schedule timesteps, seeded weights, in eval mode."""

from __future__ import annotations

import torch

from gcmodels.diffusion import PixelDiffusion

__all__ = ["tiny_pixel"]


def tiny_pixel(resolution: int = 16, channels: tuple[int, ...] = (8, 16), seed: int = 0, **kwargs) -> PixelDiffusion:
    """A seeded `PixelDiffusion` for labels "a" and "b" (`kwargs`: e.g. prediction=...)."""
    options = {"num_train_timesteps": 100, "beta_schedule": "linear", **kwargs}
    return PixelDiffusion.create(
        ["a", "b"],
        resolution=resolution,
        block_out_channels=channels,
        layers_per_block=1,
        generator=torch.Generator().manual_seed(seed),
        **options,
    ).eval()
