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
