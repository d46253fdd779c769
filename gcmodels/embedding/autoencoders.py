"""Small autoencoders in torch and the one loop that trains them.

- `MLPAutoencoder`: vectors (B, d) -> latent (B, m) -> (B, d), fully connected. With no hidden
  layer and no activation it is the linear autoencoder whose optimum spans the principal
  subspace (Baldi & Hornik, 1989); `DEC` pre-trains the deeper one.
- `ConvAutoencoder`: images (B, 3, S, S) in [-1, 1] -> latent (B, m) by two stride-2
  convolutions and a linear layer, decoded by the mirror image. With ``variational=True`` it is
  a VAE (Kingma & Welling, 2014): the encoder gives the mean and log-variance of q(z|x), the
  embedding is the mean, and the loss is the negative ELBO

      L(x) = ||x - g(z)||^2 + beta * KL(q(z|x) || N(0, I)),  z = mu + sigma * eps        (1)

  divided by the number of pixel values (so that the numbers read like a mean squared error).

Every model has ``loss(x, generator) -> (B,)`` (per-sample loss) and ``encode(x) -> (B, m)``;
`train_autoencoder` runs Adam over shuffled mini-batches. Randomness (initialisation, batch
order, VAE noise) comes from explicit seeds and ``torch.Generator`` arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["ConvAutoencoder", "MLPAutoencoder", "build_seeded", "train_autoencoder"]

M = TypeVar("M", bound=nn.Module)


def build_seeded(builder: Callable[[], M], seed: int) -> M:
    """Call `builder` with torch's global RNG seeded by `seed` inside a fork, so that the module's
    initial weights depend on `seed` only and the caller's RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return builder()


class MLPAutoencoder(nn.Module):
    """Fully connected autoencoder d -> hidden... -> latent_dim -> reversed(hidden)... -> d.

    `activation` ("relu" or "none") follows every layer but the latent and the output ones.
    """

    def __init__(self, in_dim: int, latent_dim: int, hidden: Sequence[int] = (), activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "none"):
            raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
        for name, value in (
            ("in_dim", in_dim),
            ("latent_dim", latent_dim),
            *((f"hidden[{i}]", h) for i, h in enumerate(hidden)),
        ):
            if int(value) < 1:
                raise ValueError(f"MLPAutoencoder: {name} must be positive, got {value!r}")
        dims = [int(in_dim), *(int(h) for h in hidden), int(latent_dim)]
        self.encoder = self._stack(dims, activation)
        self.decoder = self._stack(dims[::-1], activation)

    @staticmethod
    def _stack(dims: list[int], activation: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if activation == "relu" and i < len(dims) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def encode(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, latent_dim)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (B, d)."""
        return self.decoder(self.encoder(x))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample mean squared reconstruction error (B,)."""
        return (self(x) - x).pow(2).mean(dim=1)


class ConvAutoencoder(nn.Module):
    """Convolutional (variational) autoencoder of (B, 3, size, size) images in [-1, 1], eq. (1).

    Encoder: conv 4x4/2 (width) -> ReLU -> conv 4x4/2 (2 width) -> ReLU -> linear -> latent
    (mean and log-variance for the VAE). Decoder: the transposed mirror image, linear output.
    """

    def __init__(
        self, size: int, latent_dim: int, *, width: int = 32, variational: bool = False, beta: float = 1.0
    ) -> None:
        super().__init__()
        if size < 4 or size % 4:
            raise ValueError(f"ConvAutoencoder: size must be a positive multiple of 4, got {size}")
        if latent_dim < 1 or width < 1:
            raise ValueError(f"ConvAutoencoder: latent_dim and width must be positive, got {latent_dim}, {width}")
        if beta < 0:
            raise ValueError(f"ConvAutoencoder: beta must be non-negative, got {beta}")
        self.size, self.latent_dim, self.variational, self.beta = (
            int(size),
            int(latent_dim),
            bool(variational),
            float(beta),
        )
        s4 = size // 4
        flat = 2 * width * s4 * s4
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),  # (B, w, S/2, S/2)
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # (B, 2w, S/4, S/4)
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, latent_dim * (2 if variational else 1)),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, s4, s4)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # (B, w, S/2, S/2)
            nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),  # (B, 3, S, S)
        )

    def _moments(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.encoder(x)
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, latent_dim): the code, or the posterior mean for the VAE."""
        return self._moments(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (B, 3, S, S) from the code (the posterior mean for the VAE)."""
        return self.decoder(self.encode(x))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample loss (B,): mean squared error, or eq. (1) / (3 S^2) for the VAE."""
        mu, logvar = self._moments(x)
        if logvar is None:
            return (self.decoder(mu) - x).pow(2).flatten(1).mean(dim=1)
        eps = torch.randn(mu.shape, generator=generator, device="cpu").to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps
        sse = (self.decoder(z) - x).pow(2).flatten(1).sum(dim=1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return (sse + self.beta * kl) / x[0].numel()


def train_autoencoder(
    model: MLPAutoencoder | ConvAutoencoder,
    data: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    weight_decay: float = 0.0,
) -> list[dict[str, float]]:
    """Train `model` in place on `data` (N, ...) by Adam on shuffled mini-batches.

    `model.loss(x, generator)` gives the per-sample losses; their mean is minimised. Batches are
    moved to the model's device. Returns one row per epoch: {"epoch", "loss" (mean over the
    epoch's samples), "seconds"}. A non-finite loss raises `FloatingPointError`.
    """
    n = data.shape[0]
    if n == 0:
        raise ValueError("train_autoencoder: no data to train on")
    for name, count in (("epochs", epochs), ("batch_size", batch_size)):
        if int(count) < 1:
            raise ValueError(f"train_autoencoder: {name} must be positive, got {count!r}")
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(int(epochs)):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for pos in range(0, n, batch_size):
            xb = data[order[pos : pos + batch_size]].to(device)
            loss = model.loss(xb, generator)  # (B,)
            mean = loss.mean()
            opt.zero_grad(set_to_none=True)
            mean.backward()
            opt.step()
            total += float(loss.detach().sum())
        value = total / n
        if not math.isfinite(value):
            model.eval()
            raise FloatingPointError(
                f"autoencoder training diverged: loss {value} at epoch {epoch}; lower the learning rate ({lr})"
            )
        history.append({"epoch": float(epoch), "loss": value, "seconds": time.perf_counter() - start})
    model.eval()
    return history
