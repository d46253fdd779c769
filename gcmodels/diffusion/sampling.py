"""Samples of a conditional diffusion model: deterministic DDIM from pure noise (Song et al.
2021, eta = 0), the check that a fine-tuned model learnt its data.

Every gcmine model presents itself as an eps-predictor on a DDPM reference schedule
(`gcmodels.diffusion.ConditionalDiffusion`), so one sampler serves every family. With n steps
the timesteps visited are tau_j = round((T - 1) (n - j) / n), j = 0 .. n - 1 (T - 1 first, the
smallest last), and each step is

    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)      (clipped to [-clip, clip])
    x_t'   = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat     (x0_hat itself after the last step)

with eps_hat = eps_null + w (eps_c - eps_null) (classifier-free guidance; w = 1: the plain
conditional model, one network input per sample and step). x_{T-1} is the noise itself.

Determinism: the noise of sample i is the i-th of ``torch.randn((n, C, H, W))`` from
``torch.Generator().manual_seed(seed)``; every label gets the same n noises (common random
numbers: the samples of two labels differ only by the label), so a sample depends on its index,
label, the model and the settings, not on the other samples of the batch (up to the network's
float rounding on differently sized batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # a protocol, for the annotations only (gcmodels.mining imports this module)
    from gcmodels.mining.typicality import NoisePredictor

__all__ = ["Sampler", "check_ddim_settings", "ddim_denoise"]


def check_ddim_settings(steps: int, guidance: float, clip: float | None, batch_size: int) -> None:
    """ValueError naming the value when a DDIM setting (of sampling or translation) is out of range."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")


def ddim_denoise(
    model: NoisePredictor,
    x: Tensor,
    cond: Tensor,
    taus: Sequence[int],
    *,
    guidance: float = 1.0,
    clip: float | None = 1.0,
) -> Tensor:
    """Run deterministic DDIM steps over the descending timesteps `taus` from x (B, C, H, W), a
    sample of the reference process at taus[0], conditioned on `cond` (B,) long (0 = null) ->
    x0 (B, C, H, W): x0_hat of the last step (see the module docstring)."""
    n = x.shape[0]
    abar = model.alphas_cumprod.to(x.device, torch.float32)
    guided = guidance != 1.0
    for j, tau in enumerate(taus):
        tt = torch.full((n,), int(tau), dtype=torch.long, device=x.device)
        if guided:
            pred = model.predict_noise(
                torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, torch.zeros_like(cond)])
            )
            eps_c, eps_null = pred[:n], pred[n:]
            eps_hat = eps_null + guidance * (eps_c - eps_null)
        else:
            eps_hat = model.predict_noise(x, tt, cond)
        a_t = abar[int(tau)]
        x0_hat = (x - (1.0 - a_t).sqrt() * eps_hat) / a_t.sqrt()
        if clip is not None:
            x0_hat = x0_hat.clamp(-clip, clip)
        if j + 1 < len(taus):
            a_next = abar[int(taus[j + 1])]
            x = a_next.sqrt() * x0_hat + (1.0 - a_next).sqrt() * eps_hat
        else:
            x = x0_hat
    return x


@dataclass(frozen=True)
class Sampler:
    """Seeded DDIM sampling from pure noise (see the module docstring).

    steps: DDIM steps over the whole schedule; guidance: classifier-free guidance scale w
    (1 = the plain conditional model); clip: x0_hat clipped to [-clip, clip] at every step
    (1 for pixel models; None = off, for latents); batch_size: network inputs per forward pass
    (a sample counts twice when guidance != 1); seed: seed of the noise.
    """

    steps: int = 25
    guidance: float = 1.0
    clip: float | None = 1.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_ddim_settings(self.steps, self.guidance, self.clip, self.batch_size)

    def timesteps(self, num_train_timesteps: int) -> list[int]:
        """The DDIM timesteps visited, descending from T - 1 (at most `steps`, all distinct)."""
        last = num_train_timesteps - 1
        n = min(self.steps, last) if last > 0 else 1
        return sorted({int(round(last * (n - j) / n)) for j in range(n)}, reverse=True)

    def noise(self, n: int, shape: tuple[int, ...]) -> Tensor:
        """The noises (n, *shape) of samples 0 .. n - 1, float32 on the CPU."""
        return torch.randn((n, *shape), generator=torch.Generator().manual_seed(self.seed), dtype=torch.float32)

    @torch.inference_mode()
    def sample(
        self,
        model: NoisePredictor,
        labels: Tensor,
        per_label: int,
        shape: tuple[int, ...],
        *,
        device: torch.device | str = "cpu",
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """`per_label` samples of each label index of `labels` (L,) long (no null label) ->
        (L * per_label, *shape) in model space, label by label (rows l * per_label + i: sample i
        of labels[l]). `shape`: (C, H, W) of one sample in model space. `progress`, if given,
        is called with the number of samples finished after each chunk. The network runs on
        `device`; the samples are returned float32 on the CPU."""
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(
                f"labels must be a non-empty (L,) tensor of label indices, got shape {tuple(labels.shape)}"
            )
        if bool((labels == 0).any()):
            raise ValueError("cannot sample the null label (index 0) as a label; pass real labels")
        if per_label < 1:
            raise ValueError(f"per_label must be >= 1, got {per_label}")
        eps = self.noise(per_label, tuple(shape))
        cond = labels.to(device).repeat_interleave(per_label)  # (L * n,)
        x_all = eps.repeat(labels.numel(), *([1] * len(shape)))  # (L * n, C, H, W): the same n noises per label
        taus = self.timesteps(model.num_train_timesteps)
        per_chunk = max(1, self.batch_size // (2 if self.guidance != 1.0 else 1))
        out = torch.empty_like(x_all)
        for start in range(0, x_all.shape[0], per_chunk):
            stop = min(start + per_chunk, x_all.shape[0])
            x = x_all[start:stop].to(device)
            out[start:stop] = (
                ddim_denoise(model, x, cond[start:stop], taus, guidance=self.guidance, clip=self.clip).float().cpu()
            )
            if progress is not None:
                progress(stop)
        return out
