"""Training a conditional diffusion model with label dropout (one net = conditional + null model)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gcmodels.diffusion import NULL_LABEL, PixelDiffusion

__all__ = ["TrainingDiverged", "TrainResult", "train_diffusion"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model was rolled back to the last good checkpoint."""

    def __init__(self, step: int, loss: float, good_step: int) -> None:
        super().__init__(
            f"training diverged: loss is {loss} at step {step}; the model was restored to the last good "
            f"checkpoint (step {good_step}). Lower train.lr or raise train.warmup_steps."
        )
        self.step, self.loss, self.good_step = step, loss, good_step


@dataclass
class TrainResult:
    steps: int  # optimizer steps done
    stopped: str  # "budget" or "time"
    history: list[dict] = field(default_factory=list)  # step, loss, lr, seconds


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_diffusion(
    model: PixelDiffusion,
    images: Tensor,
    cond: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    grad_clip: float,
    label_dropout: float,
    checkpoint_every: int,
    generator: torch.Generator,
    max_seconds: float | None = None,
    callback: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` in place on uint8 images (N, 3, H, W) with label indices cond (N,) (0 = null).

    Eps-prediction MSE, t uniform over the schedule, labels replaced by the null label with
    probability `label_dropout`, AdamW with warm-up + cosine decay, grad-norm clipping.
    `callback` receives each history row. A non-finite loss restores the last good weights
    (kept every `checkpoint_every` steps) and raises `TrainingDiverged`.
    """
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to train on")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if cond.shape != (n,):
        raise ValueError(f"cond must be ({n},), got {tuple(cond.shape)}")
    device = model.device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup_steps, steps))
    good_state, good_step = copy.deepcopy(model.state_dict()), 0
    result = TrainResult(steps=0, stopped="budget")
    order = torch.randperm(n, generator=generator)
    pos = 0
    start = time.perf_counter()
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + min(batch_size, n)]
        pos += batch_size
        x0 = model.encode(images[idx])
        c = cond[idx].clone()
        drop = torch.rand(c.shape, generator=generator) < label_dropout
        c[drop] = NULL_LABEL
        loss = model.training_loss(x0, c.to(device), generator=generator).mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            model.load_state_dict(good_state)
            model.eval()
            raise TrainingDiverged(step, value, good_step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        row = {"step": step, "loss": value, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        sched.step()
        result.history.append(row)
        result.steps = step + 1
        if callback is not None:
            callback(row)
        if (step + 1) % checkpoint_every == 0:
            good_state, good_step = copy.deepcopy(model.state_dict()), step + 1
        if max_seconds is not None and row["seconds"] >= max_seconds:
            result.stopped = "time"
            break
    model.eval()
    return result
