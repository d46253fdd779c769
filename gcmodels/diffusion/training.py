"""Training a conditional diffusion model with label dropout (one net = conditional + null model).

`train_diffusion` fine-tunes any model with the gcmine diffusion interface (``encode``,
``training_loss(x0, cond, generator)``, ``device``; optionally ``trainable_parameters()``):
AdamW with warm-up and a cosine or constant schedule, grad-norm clipping, an optional EMA of the
trainable weights, autocast (bf16 / fp16 with loss scaling) on CUDA, and checkpoints that resume
bit-for-bit; data parallel over the processes of a torch.distributed group (`group`), with the
same steps, states and checkpoints as one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gcmodels.diffusion.base import NULL_LABEL, ConditionalDiffusion
from gcmodels.runtime import PRECISION_DTYPES

__all__ = [
    "CHECKPOINT_FORMAT",
    "PRECISIONS",
    "CheckpointMismatch",
    "TrainResult",
    "TrainingDiverged",
    "checkpointing_needed",
    "probe_step_memory",
    "train_diffusion",
]

CHECKPOINT_FORMAT = 1  # version of the `on_checkpoint` state layout
PRECISIONS = tuple(PRECISION_DTYPES)  # fp32, bf16, fp16


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model was rolled back to the last good checkpoint."""

    def __init__(self, step: int, loss: float, good_step: int) -> None:
        super().__init__(
            f"training diverged: loss is {loss} at step {step}; the model was restored to the last good "
            f"checkpoint (step {good_step}). Lower train.lr or raise train.warmup_steps."
        )
        self.step, self.loss, self.good_step = step, loss, good_step


class CheckpointMismatch(ValueError):
    """A `resume` state was written by a training with other settings, data sizes or parameters.
    Raised before the model, the optimizer or the generator are touched."""


@dataclass
class TrainResult:
    steps: int  # optimizer steps done (counting those of a resumed checkpoint)
    stopped: str  # "budget" or "time"
    history: list[dict] = field(default_factory=list)  # step, loss, lr, seconds (the resumed rows included)
    resumed_from: int = 0  # the step the training resumed from (0 = a fresh start)


def _lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup` steps, then constant 1 or cosine decay from 1 to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------- data
@dataclass
class _Buckets:
    """Batches of one bucket (one spatial shape) at a time. Each bucket has its own shuffled order,
    consumed in full batches (a bucket smaller than the batch gives all its images); with several
    buckets an epoch plan lists every bucket max(1, n_i // batch_size) times, shuffled, so buckets
    are visited in proportion to their size. One bucket draws nothing for the plan (the order of
    the generator's draws is that of the single-tensor trainer)."""

    images: list[Tensor]
    cond: list[Tensor]
    batch_size: int
    orders: list[Tensor] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    plan: Tensor | None = None
    plan_pos: int = 0

    def start(self, generator: torch.Generator) -> None:
        self.orders = [torch.randperm(len(c), generator=generator) for c in self.cond]
        self.pos = [0] * len(self.cond)
        self.plan, self.plan_pos = None, 0

    def _next_bucket(self, generator: torch.Generator) -> int:
        if len(self.cond) == 1:
            return 0
        if self.plan is None or self.plan_pos >= len(self.plan):
            slots = torch.cat([torch.full((max(1, len(c) // self.batch_size),), i) for i, c in enumerate(self.cond)])
            self.plan, self.plan_pos = slots[torch.randperm(len(slots), generator=generator)], 0
        b = int(self.plan[self.plan_pos])
        self.plan_pos += 1
        return b

    def next(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(images (B, C, H_b, W_b), cond (B,)) of the next batch."""
        b = self._next_bucket(generator)
        n = len(self.cond[b])
        if self.pos[b] + self.batch_size > n:
            self.orders[b], self.pos[b] = torch.randperm(n, generator=generator), 0
        idx = self.orders[b][self.pos[b] : self.pos[b] + min(self.batch_size, n)]
        self.pos[b] += self.batch_size
        return self.images[b][idx], self.cond[b][idx]

    def state(self) -> dict:
        return {
            "orders": [o.clone() for o in self.orders],
            "pos": list(self.pos),
            "plan": None if self.plan is None else self.plan.clone(),
            "plan_pos": self.plan_pos,
        }

    def load(self, state: dict) -> None:
        self.orders = [o.clone() for o in state["orders"]]
        self.pos = list(state["pos"])
        self.plan = None if state["plan"] is None else state["plan"].clone()
        self.plan_pos = int(state["plan_pos"])


def _buckets(images: Tensor | Sequence[Tensor], cond: Tensor | Sequence[Tensor], batch_size: int) -> _Buckets:
    """Check and normalise the inputs to a list of (images, cond) buckets."""
    cond_list: list[Tensor] | None
    if isinstance(images, Tensor):
        if not isinstance(cond, Tensor):
            raise ValueError(f"cond must be a tensor when images is one, got {type(cond).__name__}")
        images_list, cond_list = [images], [cond]
    else:
        images_list, cond_list = list(images), list(cond) if not isinstance(cond, Tensor) else None
        if cond_list is None or len(cond_list) != len(images_list):
            raise ValueError(
                f"bucketed images need a list of as many cond tensors: {len(images_list)} image bucket(s), "
                f"cond is {type(cond).__name__}{'' if cond_list is None else f' of {len(cond_list)}'}"
            )
        if not images_list:
            raise ValueError("no images to train on: the list of image buckets is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kinds = set()
    for i, (x, c) in enumerate(zip(images_list, cond_list)):
        where = "" if isinstance(images, Tensor) else f" (bucket {i})"
        if x.dim() != 4 or not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise ValueError(
                f"images{where} must be uint8 (N, 3, H, W) or floating (N, C, h, w) in model space, "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if c.shape != (x.shape[0],):
            raise ValueError(f"cond{where} must be ({x.shape[0]},), got {tuple(c.shape)}")
        kinds.add((x.dtype == torch.uint8, x.shape[1]))
    if len(kinds) > 1:
        raise ValueError(f"image buckets mix kinds (uint8?, channels): {sorted(kinds)}")
    if sum(len(c) for c in cond_list) == 0:
        raise ValueError("no images to train on")
    keep = [i for i, c in enumerate(cond_list) if len(c)]  # empty buckets are never visited
    return _Buckets([images_list[i] for i in keep], [cond_list[i] for i in keep], batch_size)


# ---------------------------------------------------------------------- state helpers
def _cpu(obj: Any) -> Any:
    """A copy of `obj` (nested dicts / lists / tuples) with every tensor cloned to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the optimised parameters: `model.trainable_parameters()` if the model
    has it (e.g. LoRA adapters only), else every parameter that requires grad."""
    names = {id(p): n for n, p in model.named_parameters()}
    if hasattr(model, "trainable_parameters"):
        params = list(model.trainable_parameters())  # type: ignore[operator]  # hasattr above; nn.Module.__getattr__ types it Tensor | Module
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    unnamed = [i for i, p in enumerate(params) if id(p) not in names]
    if unnamed:
        raise ValueError(f"trainable parameters {unnamed[:5]} are not parameters of the model")
    if not params:
        raise ValueError("the model has no trainable parameters")
    return [(names[id(p)], p) for p in params]


def _weights(named: list[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
    """CPU copies of the trainable weights (the NaN guard's restore point and the checkpoint's)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in named}


@torch.no_grad()
def _load_weights(named: list[tuple[str, nn.Parameter]], weights: dict[str, Tensor]) -> None:
    for n, p in named:
        p.copy_(weights[n])


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISION_DTYPES[precision])


def _check_signature(saved: dict, now: dict) -> None:
    if saved == now:
        return
    diffs = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]
    raise CheckpointMismatch("the checkpoint was written by a training with other settings (" + "; ".join(diffs) + ")")


# ---------------------------------------------------------------------- training
def train_diffusion(
    model: ConditionalDiffusion,
    images: Tensor | Sequence[Tensor],
    cond: Tensor | Sequence[Tensor],
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
    lr_schedule: str = "cosine",
    ema_decay: float | None = None,
    precision: str = "fp32",
    on_checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    checkpoint_seconds: float | None = None,
    loss_weighting: str = "native",
    group: Any = None,
) -> TrainResult:
    """Train `model` in place; return the loss history.

    Inputs: `images` uint8 (N, 3, H, W) encoded per batch with `model.encode`, or floating
    (N, C, h, w) already in model space (e.g. cached VAE latents) used as x0, with label indices
    `cond` (N,) long (0 = null); or lists of such tensors of different spatial shapes (buckets)
    with a list of matching (n_i,) cond tensors: each batch comes from one bucket, buckets are
    visited in proportion to their size (deterministic given `generator`).

    Eps-prediction MSE, t uniform over the schedule, labels replaced by the null label with
    probability `label_dropout`, AdamW over the trainable parameters (`model.trainable_parameters()`
    if the model has it, else those requiring grad), linear warm-up over `warmup_steps` then
    `lr_schedule` "cosine" (to lr/10 at `steps`) or "constant", grad-norm clipping at `grad_clip`.

    `loss_weighting` "eps" asks the model for its loss weighted into eps space
    (``training_loss(..., weighting="eps")``, see `ConditionalDiffusion.training_loss`); "native"
    (the default) for the plain MSE on its own target.

    `precision` "bf16" / "fp16" runs the forward pass under autocast on the model's device (fp16
    with a GradScaler; weights and optimizer stay fp32). Meant for CUDA: the pipeline never asks
    for it on a CPU (see `gcmodels.runtime.resolve_precision`), where it is correct but slow; the
    tests use it there to exercise the mixed-precision bookkeeping.

    `ema_decay`: an fp32 shadow of the trainable weights, updated after each optimizer step
    k = 1, 2, ... with decay min(ema_decay, (1 + k) / (10 + k)) (the warm-up keeps the shadow from
    clinging to the initial weights on short runs). At the end of a training (budget or time) the
    EMA weights are loaded into the model: they are the ones saved and scored.

    Checkpoints: every `checkpoint_every` steps (not after the last one) the trainable weights are
    copied to the CPU as the NaN guard's restore point and, if given, `on_checkpoint(state)` gets
    a dict of CPU copies (safe to keep) with everything needed to continue bit-for-bit: ``step``,
    ``weights`` (trainable weights by name), ``optimizer``, ``scheduler``, ``scaler``, ``ema``,
    ``generator`` (`generator.get_state()`), ``data`` (bucket orders, positions, plan),
    ``history`` and ``signature`` (the settings and data sizes). `resume` = such a state: the
    training continues from its step (the model must be built as for the first run; its trainable
    weights, the optimizer, generator, ... are restored); a state of other settings raises
    `CheckpointMismatch` before anything is modified. `max_seconds` counts the seconds of the
    resumed history too. With `checkpoint_seconds`, `on_checkpoint` is called by wall time instead:
    after the first step at which that many seconds have passed since the training (re)started or
    the last call (a multi-GB state is not copied and written every few steps); the restore point
    stays every `checkpoint_every` steps. A state carries ``host_seconds``, the time its copy to
    the CPU took.

    `callback` receives each new history row. A non-finite loss restores the last good trainable
    weights (the raw ones, not the EMA) and raises `TrainingDiverged`. The model is left in eval mode.

    `group`: a torch.distributed process group (already initialised by the caller; gloo on CPUs,
    nccl with one CUDA device per process) of processes that each call `train_diffusion` with the
    same model, data, settings, generator state and `resume`: data-parallel training. Every process
    draws the same global batch of `batch_size` (bucket, images, label dropout, t, eps: the draws of
    one process) and forwards and backwards only its contiguous slice of it (`training_loss`'s
    `part`); the gradients (of the slice's summed losses / batch size) are summed over the group, so
    each process holds the gradient of the whole batch's mean loss and clips, steps and updates the
    EMA as one process would: the weights and the generator stay in step without being sent, the
    history's loss is the whole batch's, and the checkpoint states are one process's (a state saved
    by P processes resumes in any number, one included). Same results as one process up to float
    summation order. Give `on_checkpoint` and `callback` to one process (e.g. rank 0) only: every
    process holds the same state. The `max_seconds` stop is agreed over the group (one process's
    clock suffices to stop all); `checkpoint_seconds` is decided by each process that has an
    `on_checkpoint`.
    """
    data = _buckets(images, cond, batch_size)
    _check_settings(steps, checkpoint_every, checkpoint_seconds, lr_schedule, ema_decay, precision)
    device = model.device
    named = _trainable(model)
    params = [p for _, p in named]
    signature = {
        "format": CHECKPOINT_FORMAT,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "label_dropout": label_dropout,
        "lr_schedule": lr_schedule,
        "ema_decay": ema_decay,
        "precision": precision,
        "buckets": [[len(c), *x.shape[1:]] for x, c in zip(data.images, data.cond)],
        "trainable": [[n, *p.shape] for n, p in named],
    }
    if resume is not None:
        _check_signature(resume.get("signature", {}), signature)

    opt, sched, scaler = _optimizer(params, lr, weight_decay, warmup_steps, steps, lr_schedule, device, precision)
    result = TrainResult(steps=0, stopped="budget")
    start_step, offset, good_weights, ema = _start(
        resume, named, opt, sched, scaler, ema_decay, generator, data, result
    )
    for param_group in opt.param_groups:  # a resumed state carries the kernel choice of the device it was saved on
        param_group["fused"], param_group["foreach"] = _fused(device), None
    good_step = start_step

    model.train()
    start = last_saved = time.perf_counter()
    for step in range(start_step, steps):
        if group is None:
            loss = _batch_loss(model, data, generator, label_dropout, device, precision, loss_weighting)
            value = float(loss.detach())
        else:  # this process's slice of the batch; the whole batch's gradient and loss summed over the group
            loss = _batch_loss(model, data, generator, label_dropout, device, precision, loss_weighting, group)
            _backward(loss, opt, scaler)
            value = _sum_gradients(params, loss, group)
        if not math.isfinite(value):
            _load_weights(named, good_weights)
            model.eval()
            raise TrainingDiverged(step, value, good_step)
        if group is None:
            _backward(loss, opt, scaler)
        _clip_and_step(opt, scaler, params, grad_clip)
        if ema is not None:
            ema.update(params, step)
        row = {
            "step": step,
            "loss": value,
            "lr": opt.param_groups[0]["lr"],
            "seconds": offset + time.perf_counter() - start,
        }
        sched.step()
        result.history.append(row)
        result.steps = step + 1
        if callback is not None:
            callback(row)
        if max_seconds is not None and _any_of(row["seconds"] >= max_seconds, group, device):
            result.stopped = "time"
            break
        if step + 1 >= steps:
            continue
        weights = None
        if (step + 1) % checkpoint_every == 0:  # the NaN guard's restore point
            weights = _weights(named)
            good_weights, good_step = weights, step + 1
        if on_checkpoint is not None and _checkpoint_due(step, checkpoint_every, checkpoint_seconds, last_saved):
            on_checkpoint(
                _checkpoint_state(
                    step + 1, weights, named, opt, sched, scaler, ema, generator, data, result.history, signature
                )
            )
            last_saved = time.perf_counter()
    if ema is not None:
        ema.copy_to(params)
    model.eval()
    return result


def _check_settings(
    steps: int,
    checkpoint_every: int,
    checkpoint_seconds: float | None,
    lr_schedule: str,
    ema_decay: float | None,
    precision: str,
) -> None:
    """`ValueError` naming the first training setting out of its range."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if checkpoint_seconds is not None and checkpoint_seconds < 0:
        raise ValueError(f"checkpoint_seconds must be >= 0 or None, got {checkpoint_seconds}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _optimizer(
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    steps: int,
    lr_schedule: str,
    device: torch.device,
    precision: str,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """AdamW over `params`, its learning-rate schedule (`_lr_factor`) and the loss scaler (enabled
    for fp16 only). On CUDA the fused AdamW kernel (one kernel for all parameters instead of a
    few per tensor; same update up to rounding); elsewhere torch's default implementation, so CPU
    runs stay bit for bit as before."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fused(device))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup_steps, steps, lr_schedule))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return opt, sched, scaler


def probe_step_memory(
    model: ConditionalDiffusion,
    x: Tensor,
    cond: Tensor,
    precision: str,
    loss_weighting: str = "native",
) -> dict[str, int] | None:
    """What one training step takes on the model's CUDA device without gradient checkpointing,
    measured on one sample `x` (1, ...) with label `cond` (1,) at batches of 1 and 2 (the sample
    twice): what the forward pass leaves allocated for the backward (activations, autocast's
    half-precision weight copies) beyond what was allocated before. Returns ``per_sample`` (its
    growth per sample), ``fixed`` (the part that does not grow with the batch) and ``grads`` (the
    gradients' bytes); None off CUDA (no allocator statistics). The forward's footprint, not the
    step's peak, is what grows with the batch: at a batch of 1 or 2 the peak comes at the end of
    the backward pass, when the gradients are all there and the activations mostly freed, so the
    peaks of two small batches barely differ (measured on an H200: 0.38 GiB a sample for an
    SD 1.5 UNet at 512 px from the peaks, against ~1 GiB that checkpointing saves per sample).
    The model is left as it was: the gradients are dropped and the noise comes from a generator
    of its own (the training's generator is not touched)."""
    device = model.device
    if device.type != "cuda":
        return None
    named = _trainable(model)
    was_training = model.training
    model.train()
    held = []
    for b in (1, 2):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        xb, cb = x[:1].repeat(b, *([1] * (x.dim() - 1))).to(device), cond[:1].repeat(b).to(device)
        x0 = model.encode(xb) if xb.dtype == torch.uint8 else xb.to(torch.float32)
        with _autocast(device, precision):
            weighting: dict[str, Any] = {} if loss_weighting == "native" else {"weighting": loss_weighting}
            loss = model.training_loss(x0, cb, generator=torch.Generator().manual_seed(0), **weighting)
        torch.cuda.synchronize(device)
        held.append(torch.cuda.memory_allocated(device) - before)
        loss.float().mean().backward()
        grads = sum(p.grad.numel() * p.grad.element_size() for _, p in named if p.grad is not None)
        for _, p in named:
            p.grad = None
        del loss, x0, xb
    model.train(was_training)
    torch.cuda.empty_cache()
    per_sample = max(0, held[1] - held[0])
    return {"per_sample": per_sample, "fixed": max(0, held[0] - per_sample), "grads": grads}


def checkpointing_needed(
    free_bytes: int,
    step: dict[str, int],
    batch_size: int,
    *,
    ema: bool = False,
    headroom: float = 0.85,
) -> tuple[bool, int]:
    """Whether fine-tuning needs gradient checkpointing to fit on the card, and the bytes it would
    take there without: ``need = fixed + batch_size x per_sample + grads x (3 + ema)`` from
    `probe_step_memory`'s `step` (a batch's activations, counted whole beside the whole gradients,
    which overstates the peak by at most the gradients; AdamW's two fp32 moments of the gradients'
    size, and an EMA shadow of that size too; the weights are already on the card and not in
    `free_bytes`). On when `need` exceeds `headroom` of the free memory (the rest for the
    allocator's fragmentation).
    Measured on an H200 (RESULTS 15): an SD 1.5 UNet at 512 px, batch 8, peaks at 24.0 GiB without
    and 16.3 GiB with checkpointing, which costs 27 % of the fine-tuning throughput."""
    need = step["fixed"] + batch_size * step["per_sample"] + step["grads"] * (3 + int(ema))
    return need > headroom * free_bytes, need


def _fused(device: torch.device) -> bool | None:
    """The fused AdamW on CUDA; None (torch's choice) elsewhere."""
    return True if device.type == "cuda" else None


def _start(
    resume: dict | None,
    named: list[tuple[str, nn.Parameter]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ema_decay: float | None,
    generator: torch.Generator,
    data: _Buckets,
    result: TrainResult,
) -> tuple[int, float, dict[str, Tensor], _Ema | None]:
    """The training's starting point: the step to run first, the seconds already trained, the NaN
    guard's restore point and the EMA (or None). A fresh start draws the batch order; a `resume`
    state is loaded into the trainable weights, the optimizer, schedule, scaler, generator, batch
    order and `result` (its history and steps)."""
    if resume is None:
        good_weights = _weights(named)
        data.start(generator)
        ema = None if ema_decay is None else _Ema.fresh([p for _, p in named], ema_decay)
        return 0, 0.0, good_weights, ema
    start_step = int(resume["step"])
    _load_weights(named, resume["weights"])
    good_weights = resume["weights"]  # only ever read (copied into the model by the NaN guard)
    opt.load_state_dict(resume["optimizer"])
    sched.load_state_dict(resume["scheduler"])
    scaler.load_state_dict(resume["scaler"])
    ema = None if ema_decay is None else _Ema.restored(resume["ema"], named, ema_decay)
    generator.set_state(resume["generator"])
    data.load(resume["data"])
    result.history = [dict(r) for r in resume["history"]]
    result.steps = result.resumed_from = start_step
    offset = result.history[-1]["seconds"] if result.history else 0.0
    return start_step, offset, good_weights, ema


def _batch_loss(
    model: ConditionalDiffusion,
    data: _Buckets,
    generator: torch.Generator,
    label_dropout: float,
    device: torch.device,
    precision: str,
    loss_weighting: str = "native",
    group: Any = None,
) -> Tensor:
    """The mean training loss (fp32 scalar) of the next batch, its labels dropped to the null label
    with probability `label_dropout`, the forward pass under `precision`'s autocast (the weighting
    is passed only when it is not the native one: models without weightings need not know it).

    With a process `group`: the whole batch and its randoms are drawn, but only this process's
    contiguous slice (`_rows`) is encoded and denoised, and the slice's summed loss divided by the
    batch size is returned (its sum over the group is the batch's mean loss)."""
    x, c = data.next(generator)
    c = c.clone()
    drop = torch.rand(c.shape, generator=generator) < label_dropout
    c[drop] = NULL_LABEL
    weighting: dict[str, Any] = {} if loss_weighting == "native" else {"weighting": loss_weighting}
    if group is None:
        x0 = _model_space(model, x, device)
        with _autocast(device, precision):
            return model.training_loss(x0, c.to(device), generator=generator, **weighting).float().mean()
    total = len(c)
    start, stop = _rows(total, group)
    x0 = _model_space(model, x[start:stop], device)
    with _autocast(device, precision):
        part = model.training_loss(x0, c[start:stop].to(device), generator=generator, part=(start, total), **weighting)
        return part.float().sum() / total


def _model_space(model: ConditionalDiffusion, x: Tensor, device: torch.device) -> Tensor:
    """x0 of a batch: uint8 images encoded by the model, floating inputs as they are (fp32)."""
    return model.encode(x) if x.dtype == torch.uint8 else x.to(device=device, dtype=torch.float32)


def _rows(total: int, group: Any) -> tuple[int, int]:
    """[start, stop) of this process's rows of a batch of `total`: contiguous slices in rank order,
    their sizes differing by at most one (a batch smaller than the group leaves some empty)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _backward(loss: Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Fresh gradients of `loss` (scaled under fp16). A loss without a graph (an empty slice of a
    data-parallel batch) leaves them unset."""
    opt.zero_grad(set_to_none=True)
    if loss.requires_grad:
        scaler.scale(loss).backward()


def _clip_and_step(
    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[nn.Parameter], grad_clip: float
) -> None:
    """Grad-norm clipping at `grad_clip` (of the unscaled gradients) and one optimizer step."""
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()


_BUCKET_BYTES = 256 * 2**20  # gradients summed over a process group this many bytes per collective


@torch.no_grad()
def _sum_gradients(params: list[nn.Parameter], loss: Tensor, group: Any) -> float:
    """Sum the gradients of `params` and the `loss` values over the process `group` in place; return
    the summed loss. The gradients go flattened, a few hundred MB per collective (one for a small
    model; the flat copy stays that size at any model size); a parameter keeps no gradient only when
    no process gave it one (AdamW skips it, as it does in one process). Under fp16 the gradients are
    still scaled (every process has the same scale): `unscale_` then sees the same sums everywhere,
    so every process skips or takes the same steps."""
    import torch.distributed as dist

    device = params[0].device
    extras = torch.cat(
        [
            loss.detach().float().reshape(1).to(device),
            torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device),
        ]
    )
    buckets: list[list[nn.Parameter]] = [[]]
    size = 0
    for p in params:
        if buckets[-1] and size + p.numel() * 4 > _BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel() * 4
    for i, bucket in enumerate(buckets):
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in bucket]
        last = i == len(buckets) - 1
        flat = torch.cat(parts + [extras] if last else parts)
        dist.all_reduce(flat, group=group)
        offset = 0
        for p in bucket:
            summed = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = summed.to(p.dtype, copy=True)
            else:
                p.grad.copy_(summed)
            offset += p.numel()
        if last:
            extras = flat[offset:]
    for p, given in zip(params, extras[1:].tolist()):
        if not given:
            p.grad = None
    return float(extras[0])


def _any_of(flag: bool, group: Any, device: torch.device) -> bool:
    """Whether `flag` holds in any process of `group` (the flag itself without a group)."""
    if group is None:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def _checkpoint_due(step: int, checkpoint_every: int, checkpoint_seconds: float | None, last_saved: float) -> bool:
    """Whether `on_checkpoint` is called after `step`: every `checkpoint_every` steps, or with
    `checkpoint_seconds` once that many seconds passed since `last_saved` (a `time.perf_counter()`)."""
    if checkpoint_seconds is None:
        return (step + 1) % checkpoint_every == 0
    return time.perf_counter() - last_saved >= checkpoint_seconds


def _checkpoint_state(
    step: int,
    weights: dict[str, Tensor] | None,
    named: list[tuple[str, nn.Parameter]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ema: _Ema | None,
    generator: torch.Generator,
    data: _Buckets,
    history: list[dict],
    signature: dict,
) -> dict:
    """What `on_checkpoint` gets after `step` steps: CPU copies of everything needed to continue
    bit-for-bit (`weights`: the trainable weights when already copied, else they are copied now),
    and ``host_seconds``, the time the copy took."""
    copy_start = time.perf_counter()
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "weights": weights if weights is not None else _weights(named),
        "optimizer": _cpu(opt.state_dict()),
        "scheduler": _cpu(sched.state_dict()),
        "scaler": _cpu(scaler.state_dict()),
        "ema": None if ema is None else ema.state(named),
        "generator": generator.get_state(),
        "data": data.state(),
        "history": [dict(r) for r in history],
        "signature": signature,
    }
    state["host_seconds"] = time.perf_counter() - copy_start
    return state


class _Ema:
    """An fp32 shadow of the trainable weights, updated after each optimizer step k = step + 1 with
    decay min(decay, (1 + k) / (10 + k)), loaded into the model at the end of the training."""

    def __init__(self, shadow: list[Tensor], decay: float) -> None:
        self.shadow, self.decay = shadow, decay

    @classmethod
    def fresh(cls, params: list[nn.Parameter], decay: float) -> _Ema:
        """A shadow of the current weights."""
        return cls([p.detach().float().clone() for p in params], decay)

    @classmethod
    def restored(cls, saved: dict[str, Tensor], named: list[tuple[str, nn.Parameter]], decay: float) -> _Ema:
        """The shadow of a checkpoint (`state`'s output), on each parameter's device."""
        return cls([saved[n].to(device=p.device, dtype=torch.float32, copy=True) for n, p in named], decay)

    def update(self, params: list[nn.Parameter], step: int) -> None:
        """Move the shadow towards the weights after the optimizer step `step` (0-based)."""
        _ema_update(self.shadow, params, min(self.decay, (2 + step) / (11 + step)))

    def state(self, named: list[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
        """CPU copies of the shadow, by parameter name."""
        return {n: e.to("cpu", copy=True) for (n, _), e in zip(named, self.shadow)}

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        """Load the shadow into the weights."""
        for p, e in zip(params, self.shadow):
            p.copy_(e)


@torch.no_grad()
def _ema_update(shadow: list[Tensor], params: Sequence[Tensor], decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * param, in fp32."""
    for s, p in zip(shadow, params):
        s.lerp_(p.detach().float(), 1.0 - decay)
