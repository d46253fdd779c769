"""finetune: train the conditional diffusion model (label dropout gives the null model)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmodels.config import ConfigError, ModelConfig, RuntimeConfig, TrainConfig
from gcmodels.diffusion import PixelDiffusion
from gcmodels.runtime import configure_torch, resolve_device
from gcmodels.training import TrainingDiverged, train_diffusion
from tasks.artifacts import MODEL, TRAINING, read_images, stopwatch
from tasks.logs import stage_logger
from tasks.models import model_fingerprint
from tasks.progress import StageProgress
from tasks.storage import RunStore


def _publish(store: RunStore, model: PixelDiffusion, history: list[dict]) -> str:
    with tempfile.TemporaryDirectory(prefix="gcmine-model-") as tmp:
        model.save(tmp)
        fingerprint = model_fingerprint(Path(tmp))
        store.put_dir(tmp, MODEL)
    store.write_parquet(TRAINING, pd.DataFrame(history, columns=["step", "loss", "lr", "seconds"]))
    return fingerprint


@task(name="finetune")
def finetune(
    out: str,
    shards: list[str],
    resolution: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
) -> dict:
    """Train on every usable image (unlabelled ones train the null branch only); write `model/`
    (diffusers layout + label vocabulary) and `training.parquet` (the loss curve)."""
    log = stage_logger()
    if model_config.base is not None:
        raise ConfigError(
            f"model.base={model_config.base!r}: pretrained Stable Diffusion checkpoints are not supported "
            "yet; leave model.base unset to train the small pixel model"
        )
    configure_torch(runtime.threads)
    device = resolve_device(runtime.device)
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        meta, pixels = read_images(store, shards)
        vocab = sorted({lab for lab in meta["label"] if isinstance(lab, str)})
        if not vocab:
            raise ValueError("no labelled image to train a conditional model on: give LABELS or a folder per label")
        generator = torch.Generator().manual_seed(train_config.seed)
        model = PixelDiffusion.create(
            vocab, resolution=resolution, block_out_channels=model_config.block_out_channels,
            layers_per_block=model_config.layers_per_block, num_train_timesteps=model_config.num_train_timesteps,
            beta_schedule=model_config.beta_schedule, generator=generator,
        ).to(device)
        labels = [lab if isinstance(lab, str) else None for lab in meta["label"]]
        cond = model.label_index(labels)
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))  # (N, 3, H, W) uint8
        steps = train_config.budget(len(images))
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "training a %.2fM-parameter UNet on %d images, %d labels, %d steps of batch %d on %s",
            n_params / 1e6, len(images), len(vocab), steps, train_config.batch_size, device,
        )
        progress = StageProgress(steps, "finetune", bar=runtime.progress, key="finetune-progress")

        def on_step(row: dict) -> None:
            progress.update(row["step"] + 1, loss=row["loss"])

        history: list[dict] = []
        try:
            result = train_diffusion(
                model, images, cond, steps=steps, batch_size=train_config.batch_size, lr=train_config.lr,
                warmup_steps=train_config.warmup_steps, weight_decay=train_config.weight_decay,
                grad_clip=train_config.grad_clip, label_dropout=train_config.label_dropout,
                checkpoint_every=train_config.checkpoint_every, generator=generator,
                max_seconds=None if train_config.minutes is None else 60.0 * train_config.minutes,
                callback=lambda row: (history.append(row), on_step(row)),
            )
        except TrainingDiverged:
            progress.close()
            _publish(store, model.cpu(), history)
            log.error("training diverged; the last good checkpoint was saved to %s", store.uri(MODEL))
            raise
        progress.close()
        fingerprint = _publish(store, model.cpu(), result.history)
        tail = np.mean([r["loss"] for r in result.history[-50:]])
        if result.stopped == "time":
            log.warning("train.minutes reached: stopped after %d of %d steps", result.steps, steps)
        log.info("trained %d steps; final loss (mean of last 50) %.4f", result.steps, tail)
    return {
        "steps": result.steps, "labels": vocab, "final_loss": float(tail), "fingerprint": fingerprint,
        "parameters": n_params, "device": str(device), "seconds": clock["seconds"],
    }
