"""The DDPM schedule part of the model interface, for the stub models of the typicality,
cotypicality and translation tests (they add their own `predict_noise`)."""

from __future__ import annotations

import torch


def alphas_cumprod(T: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).float()


class StubSchedule:
    def __init__(self, T: int = 1000) -> None:
        self.num_train_timesteps = T
        self.alphas_cumprod = alphas_cumprod(T)

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].view(-1, 1, 1, 1)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps


def exact_region_denoiser(model, x0: torch.Tensor, region: torch.Tensor):
    """A `_denoise` for a `ConditionalDiffusion` `model` that knows x0 (C, H, W): under a real label
    it returns the exact target of the model's parametrisation (eps, v or the flow velocity) inside
    `region` (H, W) bool and 0 outside; under the null label 0 everywhere. Typicality maps of such a
    model are then positive exactly inside `region` and 0 outside, whatever the parametrisation."""

    def denoise(x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = x.float()
        ref = x0.to(x.device, torch.float32)[None]
        if model.prediction == "flow_matching":
            s = (timestep.float() / model.flow_timesteps).view(-1, 1, 1, 1)
            target = (x - (1 - s) * ref) / s - ref  # u = eps - x0
        else:
            abar = model.alphas_cumprod.to(x.device)[timestep].view(-1, 1, 1, 1)
            eps = (x - abar.sqrt() * ref) / (1 - abar).sqrt()
            target = eps if model.prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * ref
        keep = region.to(x.device)[None, None] & (cond != 0).to(x.device).view(-1, 1, 1, 1)
        return torch.where(keep, target, torch.zeros_like(target))

    return denoise


def null_branch_error(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean over draws and channels of the eps-space squared error of a null branch that outputs 0
    in the model's parametrisation: x0 (C, H, W), draws t (N,), eps (N, C, H, W) -> (H, W)."""
    abar = model.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    if model.prediction == "epsilon":
        eps_hat = torch.zeros_like(x_t)
    elif model.prediction == "v_prediction":
        eps_hat = (1 - abar).sqrt() * x_t
    else:
        eps_hat = x_t / (abar.sqrt() + (1 - abar).sqrt())  # x_s, plus (1 - s) * 0
    return (eps_hat - eps.double()).pow(2).mean((0, 1)).float()
