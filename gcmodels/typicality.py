"""Typicality maps: how much knowing the label helps denoise each pixel.

    T(x | c) = E_{t, eps} [ L_t(x, eps, null) - L_t(x, eps, c) ],   L_t = || eps - eps_theta(x_t, t, .) ||^2

(Siglidis et al. 2024, eq. 2), estimated per pixel with N draws of (t, eps):

- t is stratified over [t_min, t_max] of the schedule (one draw per stratum), eps is Gaussian;
- the same N draws are used for every image (common random numbers across images, as in the
  paper's per-image seed reset), and the conditional and null branches share each draw and run
  in one batched forward pass (common random numbers across branches);
- the per-draw squared errors are reduced on the device, as they come, to one (H, W) map per
  image: the (N, 2, C, H, W) loss tensor is never materialised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["NoisePredictor", "TypicalityEstimator", "typicality_from_losses"]


class NoisePredictor(Protocol):
    """What the estimator needs from a conditional diffusion model (index 0 = the null label)."""

    alphas_cumprod: Tensor  # (T,)

    @property
    def num_train_timesteps(self) -> int: ...

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor: ...

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...


def typicality_from_losses(loss_null: Tensor, loss_cond: Tensor) -> Tensor:
    """The typicality integrand L(null) - L(c), elementwise (eq. 2 before the expectation)."""
    return loss_null - loss_cond


@dataclass(frozen=True)
class TypicalityEstimator:
    """Monte-Carlo estimator of per-pixel typicality maps.

    draws: N draws of (t, eps) per image; t_min, t_max: range of t as fractions of the schedule;
    batch_size: UNet inputs per forward pass (the two branches of a draw count as two);
    seed: seed of the draws (the same draws for every image and every call).
    """

    draws: int = 16
    t_min: float = 0.1
    t_max: float = 0.7
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (one draw is two UNet inputs), got {self.batch_size}")

    def sample_draws(self, num_train_timesteps: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The N draws: timesteps (N,) long, stratified over [t_min, t_max], and noise (N, *shape)."""
        g = torch.Generator().manual_seed(self.seed)
        u = torch.rand(self.draws, generator=g, dtype=torch.float64)
        frac = self.t_min + (torch.arange(self.draws, dtype=torch.float64) + u) * (self.t_max - self.t_min) / self.draws
        t = (frac * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
        eps = torch.randn((self.draws, *shape), generator=g, dtype=torch.float32)
        return t, eps

    @torch.inference_mode()
    def maps(
        self,
        model: NoisePredictor,
        x0: Tensor,
        cond: Tensor,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Typicality maps of images x0 (B, C, H, W) under labels cond (B,) long -> (B, H, W) float32.

        Channels are averaged; the map is in the model's space (pixels for a pixel model).
        `progress`, if given, is called with the number of images finished after each forward.
        """
        if x0.dim() != 4:
            raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
        if cond.shape != (x0.shape[0],):
            raise ValueError(f"cond must be (B,) = ({x0.shape[0]},), got {tuple(cond.shape)}")
        if bool((cond == 0).any()):
            raise ValueError("typicality under the null label (index 0) is zero by definition; pass real labels")
        b, _, h, w = x0.shape
        device = x0.device
        t, eps = self.sample_draws(model.num_train_timesteps, tuple(x0.shape[1:]))
        t, eps, cond = t.to(device), eps.to(device, x0.dtype), cond.to(device)
        out = torch.zeros(b, h, w, dtype=torch.float32, device=device)
        # Pairs (image, draw), image-major; each forward takes `pairs` of them x 2 branches.
        pairs = max(1, self.batch_size // 2)
        img_of = torch.arange(b, device=device).repeat_interleave(self.draws)  # (B*N,)
        draw_of = torch.arange(self.draws, device=device).repeat(b)  # (B*N,)
        null = torch.zeros(pairs, dtype=torch.long, device=device)
        for start in range(0, b * self.draws, pairs):
            i = img_of[start : start + pairs]
            d = draw_of[start : start + pairs]
            p = i.shape[0]
            e = eps[d]  # (P, C, H, W)
            x_t = model.add_noise(x0[i], e, t[d])
            pred = model.predict_noise(torch.cat([x_t, x_t]), torch.cat([t[d], t[d]]), torch.cat([cond[i], null[:p]]))
            err = (pred.float() - torch.cat([e, e]).float()).pow_(2).mean(1)  # (2P, H, W)
            out.index_add_(0, i, typicality_from_losses(err[p:], err[:p]))
            if progress is not None:
                progress((start + p) // self.draws)
        return out.div_(self.draws)
