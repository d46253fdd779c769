"""Translation across labels: an image as it would look under another label, and what changes.

SDEdit (Meng et al. 2022) with a deterministic DDIM sampler (Song et al. 2021, eta = 0), using
the fine-tuned conditional model:

1. noise the image to t_s = round(strength * (T - 1)) with the DDPM forward process
       x_{t_s} = sqrt(abar_{t_s}) x0 + sqrt(1 - abar_{t_s}) eps,   eps ~ N(0, I) from `seed`;
2. denoise from t_s to 0 conditioned on the target label with DDIM steps t -> t'
       x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)      (clipped to [-clip, clip])
       x_t'   = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat     (abar = 1 after the last step)
   where eps_hat = eps_null + w (eps_c - eps_null) (classifier-free guidance, w = 1: plain
   conditional, one UNet input per image and step).

Low strengths keep the layout (the noisy image still carries it) while letting the model redraw
what the target label explains differently. Every gcmine model presents itself as an eps-predictor
on a DDPM reference schedule (`gcmodels.diffusion.ConditionalDiffusion`: a v or flow-matching
network's output is converted to eps), so the same sampler serves every family: for a flow model,
DDIM on the reference process is its probability-flow ODE under a change of time and scale. For
latent models x0 are VAE latents (no clipping: `clip=None`) and the translations are decoded. The paper uses Plug-and-Play instead (999-step DDIM
inversion plus feature injection, ~3 500 UNet passes an image); this costs
ceil(steps * strength) passes (twice that with guidance).

Determinism: the noise eps is one (C, H, W) draw from ``torch.Generator().manual_seed(seed)``,
shared by every image (as the typicality draws are), and the sampler has no other randomness,
so a translation depends only on the image, the target, the model and the settings, not on the
other images of the batch (up to the UNet's float rounding on differently sized batches).

Then: per-pixel change maps between source and translation, their most changed patches
(:func:`gcmodels.mining.patches.top_patches` on the change map), and "consistent changes": those
patches clustered on their pixels before and after (k-means through
:func:`gcmodels.mining.elements.mine_elements`, clusters ranked by the median change of their patches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from gcmodels.diffusion.base import to_uint8
from gcmodels.diffusion.sampling import check_ddim_settings, ddim_denoise
from gcmodels.mining.elements import mine_elements
from gcmodels.mining.patches import top_patches
from gcmodels.mining.typicality import NoisePredictor

__all__ = ["ConsistentChanges", "Translator", "change_maps", "consistent_changes", "patch_crops", "to_uint8"]


@dataclass(frozen=True)
class Translator:
    """SDEdit translation with deterministic DDIM sampling (see the module docstring).

    strength: noise level t_s / (T - 1) in [0, 1] (0 returns the input unchanged);
    steps: DDIM steps over the whole schedule, of which ceil(steps * strength) are run;
    guidance: classifier-free guidance scale w (1 = the plain conditional model);
    clip: x0_hat is clipped to [-clip, clip] at every step (1 for pixel models; None = off, for latents);
    batch_size: UNet inputs per forward pass (an image counts twice when guidance != 1);
    seed: seed of the noise (the same noise for every image and every call).
    """

    strength: float = 0.6
    steps: int = 50
    guidance: float = 1.0
    clip: float | None = 1.0
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        check_ddim_settings(self.steps, self.guidance, self.clip, self.batch_size)

    def timesteps(self, num_train_timesteps: int) -> list[int]:
        """The DDIM timesteps visited, descending from t_s; empty for strength 0."""
        if self.strength == 0.0:
            return []
        t_start = int(round(self.strength * (num_train_timesteps - 1)))
        n = max(1, math.ceil(self.steps * self.strength))
        taus = [int(round(t_start * (n - j) / n)) for j in range(n)]
        return sorted(set(taus), reverse=True)

    def noise(self, shape: tuple[int, ...]) -> Tensor:
        """The shared noise eps (C, H, W) of the forward jump, float32 on the CPU."""
        return torch.randn(shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float32)

    @torch.inference_mode()
    def translate(
        self,
        model: NoisePredictor,
        x0: Tensor,
        target: Tensor,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Translate images x0 (B, C, H, W) in model space to the labels target (B,) long (no
        null label) -> (B, C, H, W) in model space ([-1, 1] for a pixel model, see `to_uint8`).

        Strength 0 returns a copy of x0, bit for bit. `progress`, if given, is called with the
        number of images finished after each chunk of images.
        """
        if x0.dim() != 4:
            raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
        if target.shape != (x0.shape[0],):
            raise ValueError(f"target must be (B,) = ({x0.shape[0]},), got {tuple(target.shape)}")
        if bool((target == 0).any()):
            raise ValueError("cannot translate to the null label (index 0); pass real labels")
        taus = self.timesteps(model.num_train_timesteps)
        if not taus:
            return x0.clone()
        device = x0.device
        target = target.to(device)
        eps = self.noise(tuple(x0.shape[1:])).to(device, x0.dtype)
        per_chunk = max(1, self.batch_size // (2 if self.guidance != 1.0 else 1))
        out = torch.empty_like(x0)
        for start in range(0, x0.shape[0], per_chunk):
            stop = min(start + per_chunk, x0.shape[0])
            x = x0[start:stop]
            t0 = torch.full((x.shape[0],), taus[0], dtype=torch.long, device=device)
            x = model.add_noise(x, eps.expand_as(x), t0)
            x = ddim_denoise(model, x, target[start:stop], taus, guidance=self.guidance, clip=self.clip)
            out[start:stop] = x.to(out.dtype)
            if progress is not None:
                progress(stop)
        return out


def change_maps(source: Tensor, translated: Tensor) -> Tensor:
    """Per-pixel change |translated - source| averaged over channels: (B, C, H, W) x 2 -> (B, H, W)."""
    if source.shape != translated.shape or source.dim() != 4:
        raise ValueError(
            f"source and translated must be (B, C, H, W) of one shape, got {tuple(source.shape)} and {tuple(translated.shape)}"
        )
    return (translated.float() - source.float()).abs().mean(1)


def patch_crops(images: Tensor, boxes: Tensor) -> Tensor:
    """Crops of equal-size boxes: images (B, C, H, W), boxes (B, k, 4) (x0, y0, x1, y1), all of
    one size s x s, -1 rows allowed -> (B, k, C, s, s) (zeros for -1 rows)."""
    b, _c, _h, _w = images.shape
    valid = (boxes >= 0).all(-1)  # (B, k)
    if not bool(valid.any()):
        raise ValueError("no box to crop")
    sizes = (boxes[..., 2] - boxes[..., 0])[valid]
    if not bool((sizes == sizes[0]).all()) or not bool(((boxes[..., 3] - boxes[..., 1])[valid] == sizes[0]).all()):
        raise ValueError("patch_crops needs square boxes of one size")
    s = int(sizes[0])
    ar = torch.arange(s, device=images.device)
    bx = boxes.clamp(min=0)
    ys = bx[..., 1, None] + ar  # (B, k, s)
    xs = bx[..., 0, None] + ar
    bi = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    crops = images.permute(0, 2, 3, 1)[bi, ys[..., :, None], xs[..., None, :]]  # (B, k, s, s, C)
    crops = crops.permute(0, 1, 4, 2, 3)  # (B, k, C, s, s)
    return torch.where(valid[..., None, None, None], crops, torch.zeros_like(crops))


@dataclass(frozen=True)
class ConsistentChanges:
    """The most changed patches of a set of translations, clustered into consistent changes.

    patches: one row per patch: ``image`` (index into the batch), ``rank`` (0 = the most changed
    patch of that image), ``x0``, ``y0``, ``x1``, ``y1`` (pixels of the maps), ``change`` (mean
    change over the patch), ``change_cluster`` (cluster id; 0 = the cluster of largest median
    change), ``distance`` (to the cluster centre).
    clusters: one row per cluster: ``change_cluster``, ``score`` (median change of its patches),
    ``size`` (patches).
    """

    patches: pd.DataFrame
    clusters: pd.DataFrame


def consistent_changes(
    source: Tensor | Sequence[Tensor],
    translated: Tensor | Sequence[Tensor],
    *,
    patch_size: int,
    per_image: int = 1,
    clusters: int = 8,
    feature_size: int = 4,
    seed: int = 0,
) -> ConsistentChanges:
    """Most changed patches of each translation, clustered across images into consistent changes.

    source, translated: (B, C, H, W), usually the images of one source label translated to one
    target label; or lists of such tensors of different sizes (images that keep their aspect
    ratio, in groups of one shape), paired group by group, whose images are numbered in list
    order. Per image the `per_image` most changed non-overlapping patch_size x patch_size
    patches of `change_maps` (greedy suppression, `top_patches`); each patch is described by its
    source and translated pixels, average-pooled to feature_size x feature_size and concatenated
    (2 C feature_size^2 values: what was there and what it became); the features are clustered
    into at most `clusters` groups (k-means on L2-normalised features, seeded), ranked by the
    median change of their patches.
    """
    sources = [source] if isinstance(source, Tensor) else list(source)
    translations = [translated] if isinstance(translated, Tensor) else list(translated)
    if len(sources) != len(translations) or not sources:
        raise ValueError(f"source and translated must be paired groups, got {len(sources)} and {len(translations)}")
    if feature_size < 1 or feature_size > patch_size:
        raise ValueError(f"feature_size must be in [1, patch_size={patch_size}], got {feature_size}")
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    feats, change, rows = [], [], []
    offset = 0
    for src, dst in zip(sources, translations):
        maps = change_maps(src, dst)
        boxes, scores = top_patches(maps, patch_size, per_image)  # (B, k, 4), (B, k)
        valid = (boxes >= 0).all(-1)  # (B, k)
        parts = []
        for x in (src, dst):
            crops = patch_crops(x.float(), boxes)[valid]  # (P, C, s, s)
            parts.append(F.adaptive_avg_pool2d(crops, feature_size).flatten(1))
        feats.append(torch.cat(parts, 1).cpu().numpy().astype(np.float64))  # (P, 2 C f^2)
        change.append(scores[valid].cpu().numpy().astype(np.float64))
        img, rank = torch.nonzero(valid, as_tuple=True)
        b = boxes[valid].cpu().numpy()
        rows.append(
            pd.DataFrame(
                {
                    "image": img.cpu().numpy() + offset,
                    "rank": rank.cpu().numpy(),
                    "x0": b[:, 0],
                    "y0": b[:, 1],
                    "x1": b[:, 2],
                    "y1": b[:, 3],
                }
            )
        )
        offset += src.shape[0]
    found = mine_elements(np.concatenate(feats), np.concatenate(change), clusters, seed=seed)
    patches = pd.concat(rows, ignore_index=True).assign(
        change=np.concatenate(change), change_cluster=found.assignment, distance=found.distance
    )
    table = pd.DataFrame({"change_cluster": np.arange(len(found.score)), "score": found.score, "size": found.size})
    return ConsistentChanges(patches=patches, clusters=table)
