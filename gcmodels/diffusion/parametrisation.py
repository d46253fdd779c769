"""What a denoising network predicts, and how each prediction is read in ONE common space.

gcmine scores every model on the same footing: the forward process the estimator, the features
and the translator see is DDPM's variance-preserving one on a *reference* schedule,

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,     eps ~ N(0, I),   t = 0 .. T - 1,

and every model answers with its estimate of eps ("eps space"). The per-pixel squared error
``(eps_hat - eps)^2`` then means the same thing whatever the network was trained to predict, so the
typicality maps of an eps, a v and a flow-matching model are comparable. The conversions are
written here once:

**epsilon** (DDPM, SD 1.x, SDXL, DiT): the network predicts eps itself.

**v_prediction** (SD 2.x 768-v; Salimans & Ho 2022): with a = sqrt(abar), b = sqrt(1 - abar)
(a^2 + b^2 = 1) the network predicts

    v = a eps - b x0.

Since x_t = a x0 + b eps,  a v + b x_t = a^2 eps - ab x0 + ab x0 + b^2 eps = eps, so

    eps_hat = a v_hat + b x_t,      eps_hat - eps = a (v_hat - v):

a squared error in v is abar times the same error in eps space (`eps_from_v`).

**flow_matching** (SD3 / SD3.5, rectified flow; Esser et al. 2024): for s in [0, 1]

    x_s = (1 - s) x0 + s eps,       the network predicts u = eps - x0,

and x_s + (1 - s) u = (1 - s) x0 + s eps + (1 - s) eps - (1 - s) x0 = eps, so

    eps_hat = x_s + (1 - s) u_hat,      eps_hat - eps = (1 - s) (u_hat - u)   (`eps_from_flow`).

*Matching noise levels.* The signal-to-noise ratio of x_t is abar / (1 - abar) = (a / b)^2, that of
x_s is ((1 - s) / s)^2. They are equal when (1 - s) / s = a / b, i.e.

    s = b / (a + b),   1 - s = a / (a + b)                                   (`flow_sigma`)

and then x_s = (a x0 + b eps) / (a + b) = x_t / (a + b): the same point up to a scale
(`flow_from_ddpm`). A flow model is therefore asked at reference timestep t for x_t rescaled by
1 / (a + b), at its own timestep s T_flow. So ``score.t_min`` / ``t_max`` (fractions of the
reference schedule) mean the same signal-to-noise ratios for every family: SD 1.x's
scaled-linear schedule (the paper's) maps t in [100, 700) to s in about [0.26, 0.77]. Latent spaces
differ between VAEs (scaling and shift factors), so equal SNR is a principled starting point,
not an identity of difficulty.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PREDICTIONS",
    "SD_REFERENCE_SCHEDULE",
    "ddpm_alphas_cumprod",
    "eps_from_flow",
    "eps_from_v",
    "flow_from_ddpm",
    "flow_sigma",
    "flow_training_sigmas",
    "v_target",
]

PREDICTIONS = ("epsilon", "v_prediction", "flow_matching")
# SD 1.x / 2.x's DDPM schedule: the reference of families that have none of their own (SD3's flow).
SD_REFERENCE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def ddpm_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> Tensor:
    """abar_t (T,) float32 of a DDPM schedule, as diffusers' DDPMScheduler computes it."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule
    )
    return torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32)


def _col(x: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) broadcastable against `like`."""
    return x.view(-1, *([1] * (like.dim() - 1)))


def v_target(x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (abar (B,) or broadcastable)."""
    abar = _col(abar, x0) if abar.dim() == 1 else abar
    return abar.sqrt() * eps - (1.0 - abar).sqrt() * x0


def eps_from_v(v: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
    """eps = sqrt(abar) v + sqrt(1 - abar) x_t (see the module docstring)."""
    abar = _col(abar, x_t) if abar.dim() == 1 else abar
    return abar.sqrt() * v + (1.0 - abar).sqrt() * x_t


def flow_sigma(abar: Tensor) -> Tensor:
    """The flow-matching level s of equal signal-to-noise ratio: sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar))."""
    a, b = abar.sqrt(), (1.0 - abar).sqrt()
    return b / (a + b)


def flow_from_ddpm(x_t: Tensor, abar: Tensor) -> Tensor:
    """x_s = x_t / (sqrt(abar) + sqrt(1 - abar)): the DDPM point x_t on the flow path at equal SNR."""
    abar = _col(abar, x_t) if abar.dim() == 1 else abar
    return x_t / (abar.sqrt() + (1.0 - abar).sqrt())


def eps_from_flow(u: Tensor, x_s: Tensor, s: Tensor) -> Tensor:
    """eps = x_s + (1 - s) u (see the module docstring)."""
    s = _col(s, x_s) if s.dim() == 1 else s
    return x_s + (1.0 - s) * u


def flow_training_sigmas(
    n: int, generator: torch.Generator | None, *, shift: float = 1.0, mean: float = 0.0, std: float = 1.0
) -> Tensor:
    """Noise levels s (n,) float32 for flow-matching training, with the density of diffusers' SD3
    training scripts (``weighting_scheme="logit_normal"``, mean 0, std 1): u = sigmoid(N(mean, std)),
    then the scheduler's time shift s = shift u / (1 + (shift - 1) u) (SD3's scheduler ships shift 3;
    the scripts index the shifted schedule at u, which is this map up to the 1/1000 grid)."""
    if not shift > 0 or not math.isfinite(shift):
        raise ValueError(f"shift must be a positive number, got {shift}")
    u = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float32) * std + mean)
    return shift * u / (1.0 + (shift - 1.0) * u)
