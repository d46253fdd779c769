"""finetune: train the conditional diffusion model (label dropout gives the null model)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmine.tasks.infra.artifacts import MODEL, TRAINING, artifact_key, model_description, read_images, stopwatch
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.checkpoints import CHECKPOINT, drop_checkpoint, read_checkpoint, write_checkpoint
from gcmine.tasks.infra.distributed import process_group
from gcmine.tasks.infra.errors import DamagedArtifact, InputError, out_of_memory_hint
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.integrity import file_records, model_damage
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import COMPLETE, TRAINING_SET, model_fingerprint
from gcmine.tasks.infra.progress import StageProgress
from gcmine.tasks.infra.storage import RunStore, scratch_dir
from gcmine.tasks.latents import base_key, read_latent_inputs, shape_groups
from gcmodels.config import ConfigError, ModelConfig, RuntimeConfig, TrainConfig
from gcmodels.data.images import square_tiles
from gcmodels.diffusion import ConditionalDiffusion, PixelDiffusion, inspect_base, load_base
from gcmodels.diffusion.autoencoder import train_collection_autoencoder
from gcmodels.diffusion.training import (
    CheckpointMismatch,
    TrainingDiverged,
    checkpointing_needed,
    probe_step_memory,
    train_diffusion,
)
from gcmodels.labels import count_labels, vocabulary
from gcmodels.mining.cotypicality import stratified_split
from gcmodels.runtime import configure_torch, data_parallel_devices, resolve_device, resolve_precision


def _publish(
    store: RunStore, model: ConditionalDiffusion, history: list[dict], trained_on: pd.DataFrame, config_key: str
) -> str:
    """Write `model/` (weights, training set, completion marker last) and `training.parquet`."""
    with scratch_dir("model") as tmp:
        model.save(tmp)
        trained_on.to_parquet(Path(tmp) / TRAINING_SET, index=False)
        fingerprint = model_fingerprint(Path(tmp))
        marker = {
            "fingerprint": fingerprint,
            "config_key": config_key,
            "labels": list(model.labels),
            "images": len(trained_on),
            "files": file_records(Path(tmp), skip=(COMPLETE,)),  # size and SHA-256 of each file, checked before reuse
        }
        (Path(tmp) / COMPLETE).write_text(json.dumps(marker, indent=2, ensure_ascii=False))
        store.put_dir(tmp, MODEL)
    store.write_parquet(TRAINING, pd.DataFrame(history, columns=["step", "loss", "lr", "seconds"]))
    return fingerprint


def checkpoint_of(model_config: ModelConfig, storage_options: dict | None = None):
    """(what model.base is, its class map read and checked) or (None, None) for the pixel model."""
    if model_config.base is None:
        return None, None
    from gcmine.tasks.latents import read_class_map

    try:
        info = inspect_base(model_config.base)
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None
    mapping = (
        read_class_map(model_config.class_map, info, storage_options) if model_config.class_map is not None else None
    )
    return info, mapping


def _new_model(
    vocab: list[str],
    resolution: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    generator,
    class_map: dict[str, int] | None = None,
):
    """The model to fine-tune: the small pixel UNet from scratch (in `model.prediction`), or the
    checkpoint `model.base` as its family (LoRA adapters added with `train.lora_rank`). A directory
    of no supported family, parts that do not fit, or labels its conditioning cannot express (a
    DiT label that is no class id) are configuration errors naming what is wrong."""
    if model_config.base is None:
        return PixelDiffusion.create(
            vocab,
            resolution=resolution,
            block_out_channels=model_config.block_out_channels,
            layers_per_block=model_config.layers_per_block,
            num_train_timesteps=model_config.num_train_timesteps,
            beta_schedule=model_config.beta_schedule,
            prediction=model_config.prediction,
            generator=generator,
            latent_factor=model_config.latent_factor,
            latent_channels=model_config.latent_channels,
            autoencoder_width=model_config.autoencoder_width,
        )
    try:
        model = load_base(
            model_config.base,
            vocab,
            prompt_template=model_config.prompt_template,
            null_prompt=model_config.null_prompt,
            class_map=class_map,
        )
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None
    if train_config.lora_rank:
        model.enable_lora(train_config.lora_rank, train_config.lora_alpha, generator=generator)
    return model


def _model_on(
    device: torch.device,
    vocab: list[str],
    resolution: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    generator,
    class_map: dict[str, int] | None,
):
    """`_new_model` moved to `device`, with gradient checkpointing when `train.gradient_checkpointing`
    is true ('auto' is decided once the training data is at hand: `_auto_checkpointing`)."""
    model = _new_model(vocab, resolution, model_config, train_config, generator, class_map).to(device)
    if train_config.gradient_checkpointing is True:
        model.enable_gradient_checkpointing()
    return model


def _auto_checkpointing(
    model: ConditionalDiffusion, images, cond, train_config: TrainConfig, precision: str, log
) -> bool:
    """`train.gradient_checkpointing=auto`: on when one probe step of the largest training shape on
    the CUDA device says the fine-tuning would not fit in its free memory without it
    (`probe_step_memory`, `checkpointing_needed`, with each process's share of the batch under
    `train.processes`); off on a CPU. The decision and its numbers are logged; returns whether
    checkpointing is on (the data-parallel processes follow rank 0's decision)."""
    if model.device.type != "cuda":
        log.info("gradient checkpointing off (train.gradient_checkpointing=auto: off on %s)", model.device)
        return False
    x, c = (images, cond) if isinstance(images, torch.Tensor) else max(zip(images, cond), key=lambda b: b[0][0].numel())
    step = probe_step_memory(model, x[:1], c[:1], precision, model.resolved_loss_weighting(train_config.loss_weighting))
    assert step is not None  # CUDA
    free, total = torch.cuda.mem_get_info(model.device)
    batch = train_config.batch_size // train_config.processes
    on, need = checkpointing_needed(free, step, batch, ema=train_config.ema_decay is not None)
    log.info(
        "gradient checkpointing %s (train.gradient_checkpointing=auto): the fine-tuning needs ~%.1f GiB without it "
        "(batch %d x %.2f GiB + %.1f GiB), %.1f of %.1f GiB are free",
        "on" if on else "off",
        need / 2**30,
        batch,
        step["per_sample"] / 2**30,
        (need - batch * step["per_sample"]) / 2**30,
        free / 2**30,
        total / 2**30,
    )
    if on:
        model.enable_gradient_checkpointing()
    return on


def _channels_first(stacked: np.ndarray, pixels: bool) -> np.ndarray:
    """Working images (N, H, W, 3) uint8 -> (N, 3, H, W); latents (N, C, h, w) are already so."""
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)) if pixels else stacked


def _memory_settings(
    model_config: ModelConfig, train_config: TrainConfig, resolution: int, checkpointing: bool
) -> dict[str, object]:
    """The settings an out-of-memory error in fine-tuning names, first the one to lower first
    (`checkpointing`: whether gradient checkpointing is on, as set or as 'auto' chose)."""
    out: dict[str, object] = {"train.batch_size": train_config.batch_size, "data.resolution": resolution}
    if model_config.base is not None:
        if not checkpointing:
            out["train.gradient_checkpointing (set true)"] = train_config.gradient_checkpointing
        if not train_config.lora_rank:
            out["train.lora_rank (set e.g. 16)"] = 0
    return out


def holdout_split(meta: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """The image ids held out of fine-tuning: `fraction` of each label's labelled images
    (`stratified_split` over the images sorted by id, so the split depends on the image contents,
    labels, fraction and seed, not on file order). Empty for fraction 0."""
    if fraction <= 0:
        return set()
    labelled = meta[meta["label"].map(lambda v: isinstance(v, str))].drop_duplicates("image_id").sort_values("image_id")
    if labelled.empty:
        return set()
    _, test = stratified_split(labelled["label"].tolist(), fraction, seed)
    return set(labelled["image_id"].iloc[test])


def reuse_decision(
    store: RunStore, training_set: pd.DataFrame, config_key: str, retrain_fraction: float
) -> tuple[str | None, str]:
    """The fingerprint of the run root's model if it may score this dataset as it is, else None;
    and the reason, for the log. A model is reused when it was trained with the same settings,
    knows every current label, and at most `retrain_fraction` of its training set changed
    (images added, removed or relabelled)."""
    if not store.exists(f"{MODEL}/{COMPLETE}"):
        return None, "no complete model in the run folder yet"
    try:
        meta = store.read_json(f"{MODEL}/{COMPLETE}")
    except DamagedArtifact as err:
        stage_logger().warning("%s: training a new model", err)
        return None, f"the model's marker {store.uri(f'{MODEL}/{COMPLETE}')} is damaged"
    if meta.get("config_key") != config_key:
        return None, "the model or training settings changed"
    damage = model_damage(store, MODEL, meta, model_fingerprint)
    if damage is not None:  # never reuse (nor score with) weights that are not the ones written
        stage_logger().warning("the model folder %s is damaged (%s): training a new model", store.uri(MODEL), damage)
        return None, f"the model folder is damaged ({damage})"
    new_labels = sorted(set(training_set["label"]) - set(meta.get("labels", [])))
    if new_labels:
        return None, f"new label(s) {new_labels[:5]} unknown to the existing model"
    before = store.read_parquet(f"{MODEL}/{TRAINING_SET}")
    old = set(zip(before["image_id"], before["label"]))
    cur = set(zip(training_set["image_id"], training_set["label"]))
    added, removed = len(cur - old), len(old - cur)
    frac = (added + removed) / max(1, len(old))
    detail = f"{added} image(s) added, {removed} removed or relabelled since training ({frac:.1%} of {len(old)})"
    if frac > retrain_fraction:
        return None, f"{detail} > train.retrain_fraction = {retrain_fraction:.0%}"
    return meta["fingerprint"], f"{detail} <= train.retrain_fraction = {retrain_fraction:.0%}"


@task(name="finetune", task_run_name="finetune")
def finetune(
    out: str,
    shards: list[str],
    resolution: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
    conditioning: str | None = None,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    latents: list[str] | None = None,
) -> dict:
    """Train on every usable image (unlabelled ones train the null branch only) except the
    held-out split (`holdout` of each label's images, see `holdout_split`); write `model/`
    (diffusers layout + label vocabulary + the training set) and `training.parquet`. Labels come
    from the conditioning table `conditioning` when given (see gcmine.tasks.cluster.condition), else
    from the manifest.

    Every `train.checkpoint_every` steps, or by wall time every `train.checkpoint_minutes`, the
    training state (trainable weights only: a LoRA run's adapters) replaces `checkpoints/finetune.pt`
    (with the settings key and the training set's fingerprint); a finetune that starts a training
    with the same settings and data resumes from it ("resuming from step K") and ends with the
    model an uninterrupted run gives. The checkpoint is deleted once the model is published.

    With `model_config.base` (a local checkpoint directory of a supported family) its denoiser
    (UNet or transformer) is fine-tuned (fully, or LoRA adapters with `train.lora_rank`) on the
    cached VAE latents `latents` (one artifact per shard, see tasks/latents.py), batched by aspect
    ratio, with the family's conditioning (the label prompts of `model.prompt_template` and
    `model.null_prompt`, or DiT class ids); VAE and text encoders stay frozen, and `model/` is a
    complete diffusers directory that the family's pipeline class loads."""
    log = stage_logger()
    if model_config.base is not None and latents is None:
        raise ConfigError("model.base is set but finetune got no latents: the latents stage must run first")
    configure_torch(runtime.threads)
    device = resolve_device(runtime.device)
    precision = resolve_precision(runtime.precision, device)
    devices = data_parallel_devices(train_config.processes, device)  # too few GPUs fails now, before any work
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        meta, pixels, vocab, held = _training_images(store, shards, conditioning, latents, holdout, holdout_seed, log)
        training_set = meta[meta["label"].map(lambda v: isinstance(v, str))][["image_id", "label"]].reset_index(
            drop=True
        )
        checkpoint, class_map = checkpoint_of(model_config, storage_options)
        config_key = _config_key(
            resolution, model_config, train_config, pixels, latents is None, holdout, holdout_seed, class_map
        )
        reused, why = reuse_decision(store, training_set, config_key, train_config.retrain_fraction)
        if reused is not None:
            log.info("finetune reused the existing model %s: %s", reused, why)
            return _reused_summary(reused, vocab, why, device, held)
        log.info("training a new model: %s", why)
        labels = [lab if isinstance(lab, str) else None for lab in meta["label"]]
        data_key = content_key(meta["image_id"].tolist(), labels)  # the images and labels, in training order
        with ExitStack() as cards:
            for card in dict.fromkeys(devices):  # one training per card (nothing taken on CPU)
                cards.enter_context(gpu_slot(card, runtime))
            generator = torch.Generator().manual_seed(train_config.seed)
            model = _model_on(device, vocab, resolution, model_config, train_config, generator, class_map)
            autoencoder = _collection_autoencoder(
                model, pixels, train_config, runtime, out, store, config_key, data_key, log
            )
            images, cond = _training_tensors(
                model, pixels, labels, latents is None, train_config.batch_size, log, train_config.square_crops
            )
            checkpointing = train_config.gradient_checkpointing is True
            if train_config.gradient_checkpointing == "auto":
                checkpointing = _auto_checkpointing(model, images, cond, train_config, precision, log)
            steps = train_config.budget(len(meta))
            trainable = getattr(model, "trainable_parameters", model.parameters)()
            n_params = sum(p.numel() for p in trainable)
            log.info(
                "training %.2fM parameters (%s) on %d images, %s, %d steps of batch %d on %s (%s)",
                n_params / 1e6,
                model_description(model_config, train_config, checkpoint),
                len(meta),
                count_labels(vocab),
                steps,
                train_config.batch_size,
                device
                if len(devices) == 1
                else f"{len(devices)} data-parallel processes ({', '.join(map(str, devices))})",
                precision,
            )
            resume = _resume_state(store, config_key, data_key, log)
            on_checkpoint = _checkpoint_writer(store, config_key, data_key, log, _autoencoder_entry(model))
            progress = StageProgress(
                steps, "finetune", bar=runtime.progress, key=artifact_key(out, "finetune-progress")
            )
            history: list[dict] = []
            replica = _Replica(
                out, shards, resolution, model_config, train_config, runtime, storage_options, conditioning,
                holdout, holdout_seed, latents, class_map, checkpointing, data_key,
            )  # fmt: skip
            train = _trainer(
                model, images, cond, steps, train_config, generator, precision, on_checkpoint, progress, history,
                devices, replica,
            )  # fmt: skip
            memory = _memory_settings(model_config, train_config, resolution, checkpointing)
            result, fingerprint = _train_and_publish(
                train, resume, memory, device, progress, history, store, model, training_set, config_key, log
            )
        tail = np.mean([r["loss"] for r in result.history[-50:]])
        if result.stopped == "time":
            log.warning("train.minutes reached: stopped after %d of %d steps", result.steps, steps)
        log.info("trained %d steps; final loss (mean of last 50) %.4f", result.steps, tail)
    return {
        "steps": result.steps,
        "labels": vocab,
        "final_loss": float(tail),
        "fingerprint": fingerprint,
        "parameters": n_params,
        "device": str(device),
        "processes": len(devices),
        "training_inputs": len(images) if isinstance(images, torch.Tensor) else sum(map(len, images)),
        "training_shapes": 1 if isinstance(images, torch.Tensor) else len(images),
        "reused": False,
        "reason": why,
        "held_out": len(held),
        **({"autoencoder": autoencoder} if autoencoder is not None else {}),
        "seconds": clock["seconds"],
    }


def _autoencoder_entry(model: ConditionalDiffusion) -> dict:
    """What every checkpoint of a latent pixel model carries besides the trainer's state: its
    collection autoencoder's weights (a resumed training needs the same latents). {} otherwise."""
    ae = getattr(model, "autoencoder", None)
    return {} if ae is None else {"autoencoder": {k: v.detach().cpu() for k, v in ae.state_dict().items()}}


def _saved_autoencoder(store: RunStore, config_key: str, data_key: str, log=None) -> dict | None:
    """The autoencoder weights of the run root's checkpoint when a training of the same settings
    and training set wrote it, else None (said on `log` when the checkpoint is another training's)."""
    saved = read_checkpoint(store)
    if saved is None:
        return None
    if saved.get("config_key") != config_key or saved.get("data_key") != data_key:
        if log is not None:
            log.info("ignoring the checkpoint of another training (settings or training set changed)")
        return None
    return saved.get("autoencoder")


def _collection_autoencoder(
    model: ConditionalDiffusion,
    pixels: list[np.ndarray],
    train_config: TrainConfig,
    runtime: RuntimeConfig,
    out: str,
    store: RunStore,
    config_key: str,
    data_key: str,
    log,
) -> dict | None:
    """A latent pixel model's collection autoencoder (model.latent_factor > 1), trained in place
    on the training set's working images (`train_collection_autoencoder`: train.autoencoder_steps of
    train.batch_size crops, seeded by train.seed) before the UNet, and written to the checkpoint at
    once; a finetune interrupted after it (same settings, same training set) reads it back instead
    of training it again. Returns what was done (None for any other model)."""
    ae = getattr(model, "autoencoder", None)
    if ae is None:
        return None
    saved = _saved_autoencoder(store, config_key, data_key, log)
    if saved is not None:
        ae.load_state_dict(saved)
        log.info("the collection autoencoder of the interrupted training is reused (%s)", store.uri(CHECKPOINT))
        return {"reused": True, "seconds": 0.0}
    images = [torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1))) for p in pixels]
    steps = train_config.autoencoder_steps
    log.info(
        "training the collection autoencoder (%d px working images -> %d latent channels, %d times smaller): %d steps "
        "of batch %d",
        max(max(p.shape[:2]) for p in pixels),
        ae.channels,
        ae.factor,
        steps,
        train_config.batch_size,
    )
    progress = StageProgress(steps, "autoencoder", bar=runtime.progress, key=artifact_key(out, "autoencoder-progress"))
    began = time.perf_counter()
    result = train_collection_autoencoder(
        ae,
        images,
        steps=steps,
        batch_size=train_config.batch_size,
        lr=train_config.autoencoder_lr,
        crop=train_config.autoencoder_crop,
        generator=torch.Generator().manual_seed(train_config.seed),
        on_step=lambda step, loss: progress.update(step + 1, loss=loss),
    )
    progress.close()
    seconds = time.perf_counter() - began
    log.info(
        "collection autoencoder trained in %.0f s on %d px crops: reconstruction MSE %.4f (last 100 steps, pixels in "
        "[-1, 1])",
        seconds,
        result.crop,
        result.mse,
    )
    write_checkpoint(
        store, {"config_key": config_key, "data_key": data_key, "state": None, **_autoencoder_entry(model)}
    )
    return {"reused": False, "steps": result.steps, "crop": result.crop, "mse": result.mse, "seconds": seconds}


def _reused_summary(fingerprint: str, vocab: list[str], why: str, device: torch.device, held: set[str]) -> dict:
    """finetune's result when it reuses the run root's model `fingerprint` (no training: 0 seconds)."""
    return {
        "fingerprint": fingerprint,
        "labels": vocab,
        "reused": True,
        "reason": why,
        "device": str(device),
        "held_out": len(held),
        "seconds": 0.0,
    }


def _training_images(
    store: RunStore,
    shards: list[str],
    conditioning: str | None,
    latents: list[str] | None,
    holdout: float,
    holdout_seed: int,
    log,
) -> tuple[pd.DataFrame, list[np.ndarray], list[str], set[str]]:
    """What the model trains on: the live images' rows (image_id, label) and their working images
    (H, W, 3) uint8, each at its own size, or with `latents` their cached VAE latents (C, h, w);
    the label vocabulary; and the held-out image ids (`holdout_split`), already removed. No
    labelled image is an `InputError` saying how to give labels."""
    if latents is None:  # working images, each at its own size (data.resize=short_side keeps the aspect ratio)
        meta, pixels = read_images(store, shards, conditioning, ragged=True)
    else:  # model.base: the cached latents of every live image (unlabelled ones train the null prompt)
        meta, pixels = read_latent_inputs(store, latents, conditioning)
    vocab = vocabulary(meta["label"])  # the single labels, then the label sets of multi-label images
    if not vocab:
        raise InputError(
            "no labelled image to train a conditional model on: give --labels (a CSV/Parquet with "
            "filename,label) or a folder per label, or set data.labels=clusters to condition on the "
            "discovered clusters"
        )
    held = holdout_split(meta, holdout, holdout_seed)
    if held:
        keep = ~meta["image_id"].isin(held).to_numpy()
        pixels = [z for z, k in zip(pixels, keep) if k]
        meta = meta[keep].reset_index(drop=True)
        log.info("%d labelled image(s) held out of fine-tuning (score.holdout = %g)", len(held), holdout)
    return meta, pixels, vocab, held


def _config_key(
    resolution: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    pixels: list[np.ndarray],
    working_images: bool,
    holdout: float,
    holdout_seed: int,
    class_map: dict[str, int] | None,
) -> str:
    """The key of the settings a model is trained with (those that would make another model): a
    model of the run root is reused, and a checkpoint resumed, only under the same key.
    `train.processes` is not part of it: any number of processes trains the same model (up to
    float summation order), and a checkpoint of one resumes in any other number."""
    # working images that keep an oblong original's aspect ratio (data.resize=short_side) key
    # the model too: a change of resize policy retrains it (squares are the same under both)
    oblong = ["aspect kept"] if working_images and any(p.shape[0] != p.shape[1] for p in pixels) else []
    # square crops change the training only when some working image is oblong (a square is its own
    # crop): off, or on over squares, keys as before the setting existed
    crops = bool(train_config.square_crops and oblong)
    # the collection autoencoder's settings key a latent pixel model only: a pixel-space model keys as
    # before they existed
    latent = model_config.latent_factor > 1
    autoencoder = {f for f in TrainConfig.model_fields if f.startswith("autoencoder_")}
    return content_key(
        resolution,
        model_config if latent else model_config.model_dump(mode="json", exclude=model_config.latent_fields()),
        # P processes train the same model
        train_config.model_dump(
            mode="json",
            exclude={"retrain_fraction", "processes"}
            | (set() if crops else {"square_crops"})
            | (set() if latent else autoencoder),
        ),
        *oblong,
        *([{"holdout": holdout, "seed": holdout_seed}] if holdout > 0 else []),
        *([base_key(model_config.base)] if model_config.base is not None else []),
        *([sorted(class_map.items())] if class_map else []),
    )


def _training_tensors(
    model: ConditionalDiffusion,
    pixels: list[np.ndarray],
    labels: list[str | None],
    working_images: bool,
    batch_size: int,
    log,
    square_crops: bool = False,
):
    """The trainer's inputs: working images of one shape (squares) as one (N, 3, H, W) uint8
    tensor with the label indices (N,); else one tensor per shape (aspect ratio) and a matching
    list of (n_i,) label indices (the batching is logged). With `square_crops` (working images of
    several shapes), each image's overlapping square tiles (`square_tiles`) with its label: one
    tensor of squares."""
    if square_crops and working_images and len({p.shape[:2] for p in pixels}) > 1:
        tiles = [square_tiles(p) for p in pixels]
        log.info(
            "training on %d square crops of %d aspect-kept working images (%.1f a image)",
            sum(map(len, tiles)),
            len(pixels),
            sum(map(len, tiles)) / max(1, len(pixels)),
        )
        labels = [lab for lab, t in zip(labels, tiles) for _ in t]
        pixels = [np.ascontiguousarray(c) for t in tiles for c in t]
    groups = list(shape_groups(pixels).values())
    if working_images and len(groups) == 1:  # working images of one shape (squares): (N, 3, H, W) uint8
        cond = model.label_index(labels)
        images = torch.from_numpy(_channels_first(np.stack(pixels), True))
        return images, cond
    # batched by shape (aspect ratio): lists of (n_i, C, h, w) and (n_i,)
    all_cond = model.label_index(labels)
    images = [torch.from_numpy(_channels_first(np.stack([pixels[i] for i in idx]), working_images)) for idx in groups]
    cond = [all_cond[idx] for idx in groups]
    log.info(
        "%d working shapes batched apart (the largest %d images, %d shape(s) smaller than a batch of %d)",
        len(groups),
        max(map(len, groups)),
        sum(len(g) < batch_size for g in groups),
        batch_size,
    )
    return images, cond


def _resume_state(store: RunStore, config_key: str, data_key: str, log) -> dict | None:
    """The trainer state to resume from: that of the run root's checkpoint when it was written by a
    training of the same settings (`config_key`) and training set (`data_key`), else None."""
    saved = read_checkpoint(store)
    if saved is None:
        return None
    if saved.get("config_key") == config_key and saved.get("data_key") == data_key:
        resume = saved["state"]
        if resume is None:  # only a latent model's autoencoder was saved (see _collection_autoencoder)
            return None
        log.info("resuming from step %d (%s)", resume["step"], store.uri(CHECKPOINT))
        return resume
    log.info("ignoring the checkpoint of another training (settings or training set changed)")
    return None


def _checkpoint_writer(store: RunStore, config_key: str, data_key: str, log, extra: dict | None = None):
    """The trainer's `on_checkpoint`: write its state with the keys it resumes under (and `extra`
    entries: a latent model's autoencoder), and log the time taken to copy it to the host and to
    write it."""

    def on_checkpoint(state: dict) -> None:
        began = time.perf_counter()
        write_checkpoint(store, {"config_key": config_key, "data_key": data_key, "state": state, **(extra or {})})
        log.info(
            "checkpoint at step %d: %.1f s to copy the state to the host, %.1f s to write %s",
            state["step"],
            state.get("host_seconds", 0.0),
            time.perf_counter() - began,
            store.uri(CHECKPOINT),
        )

    return on_checkpoint


def _trainer(
    model: ConditionalDiffusion,
    images,
    cond,
    steps: int,
    train_config: TrainConfig,
    generator: torch.Generator,
    precision: str,
    on_checkpoint,
    progress: StageProgress | None,
    history: list[dict],
    devices: list[torch.device] | None = None,
    replica: _Replica | None = None,
    group=None,
):
    """`train(resume)`: `train_diffusion` with the training settings, from the state `resume` (or
    from the start with None); every new history row is appended to `history` (which starts as
    the resumed rows) and moves `progress` (if any).

    With several `devices` (`train.processes`) this process trains as rank 0 of a process group
    whose other ranks are spawned for the call and run `_replica_trains(replica)` (the same
    training from the same inputs, resumed from the same checkpoint); a spawned rank trains in
    the `group` it is given."""

    def on_step(row: dict) -> None:
        if progress is not None:
            progress.update(row["step"] + 1, loss=row["loss"])

    def train(resume: dict | None):
        if devices is None or len(devices) == 1:
            return train_on(resume, group)
        job = replica.resuming(None if resume is None else int(resume["step"]))  # type: ignore[union-attr]
        with process_group(devices, _replica_trains, (job,)) as world:
            return train_on(resume, world)

    def train_on(resume: dict | None, group):
        history[:] = [] if resume is None else [dict(r) for r in resume["history"]]
        return train_diffusion(
            model,
            images,
            cond,
            steps=steps,
            **train_config.trainer_settings(),
            generator=generator,
            callback=lambda row: (history.append(row), on_step(row)),
            precision=precision,
            on_checkpoint=on_checkpoint,
            resume=resume,
            loss_weighting=model.resolved_loss_weighting(train_config.loss_weighting),
            group=group,
        )

    return train


@dataclass(frozen=True)
class _Replica:
    """What a spawned data-parallel rank needs to build rank 0's training itself (picklable: the
    inputs are read again from the run root, not sent): the task's arguments, the class map,
    whether gradient checkpointing is on (rank 0's decision), the training set's key (checked) and
    the step of the checkpoint to resume (None = from the start)."""

    out: str
    shards: list[str]
    resolution: int
    model_config: ModelConfig
    train_config: TrainConfig
    runtime: RuntimeConfig
    storage_options: dict | None
    conditioning: str | None
    holdout: float
    holdout_seed: int
    latents: list[str] | None
    class_map: dict[str, int] | None
    checkpointing: bool
    data_key: str
    resume_step: int | None = None

    def resuming(self, step: int | None) -> _Replica:
        return dataclasses.replace(self, resume_step=step)


def _replica_trains(group, device: torch.device, job: _Replica) -> None:
    """A spawned data-parallel rank of a finetune: the training of rank 0 (same images, labels,
    model, generator and checkpoint, read here from the run root) on `device`, in `group`; rank 0
    alone logs progress, writes checkpoints and publishes."""
    log = logging.getLogger("gcmine.finetune")
    configure_torch(job.runtime.threads)
    store = RunStore(job.out, job.storage_options)
    meta, pixels, vocab, _ = _training_images(
        store, job.shards, job.conditioning, job.latents, job.holdout, job.holdout_seed, log
    )
    labels = [lab if isinstance(lab, str) else None for lab in meta["label"]]
    if content_key(meta["image_id"].tolist(), labels) != job.data_key:
        raise RuntimeError(f"the training set in {store.uri('')} changed while the data-parallel processes started")
    generator = torch.Generator().manual_seed(job.train_config.seed)
    model = _model_on(device, vocab, job.resolution, job.model_config, job.train_config, generator, job.class_map)
    if getattr(model, "autoencoder", None) is not None:  # rank 0 trained it and saved it in the checkpoint
        key = _config_key(
            job.resolution, job.model_config, job.train_config, pixels, job.latents is None, job.holdout,
            job.holdout_seed, job.class_map,
        )  # fmt: skip
        saved = _saved_autoencoder(store, key, job.data_key)
        if saved is None:
            raise RuntimeError(f"{store.uri(CHECKPOINT)} holds no autoencoder of this training for the replica")
        model.autoencoder.load_state_dict(saved)
    if job.checkpointing and job.train_config.gradient_checkpointing is not True:
        model.enable_gradient_checkpointing()
    images, cond = _training_tensors(
        model, pixels, labels, job.latents is None, job.train_config.batch_size, log, job.train_config.square_crops
    )
    resume = None
    if job.resume_step is not None:
        saved = read_checkpoint(store)
        resume = None if saved is None else saved["state"]
        if resume is None or int(resume["step"]) != job.resume_step:
            raise RuntimeError(
                f"{store.uri(CHECKPOINT)} is not the checkpoint of step {job.resume_step} rank 0 resumes"
            )
    precision = resolve_precision(job.runtime.precision, device)
    steps = job.train_config.budget(len(meta))
    train = _trainer(model, images, cond, steps, job.train_config, generator, precision, None, None, [], group=group)
    train(resume)


def _train_or_restart(train, resume: dict | None, log):
    """`train(resume)`; when the trainer refuses the checkpoint's state (`CheckpointMismatch`,
    raised before anything changed, e.g. another precision) a warning and `train(None)`."""
    try:
        return train(resume)
    except CheckpointMismatch as err:
        log.warning("not resuming: %s; training from the start", err)
        return train(None)


def _train_and_publish(
    train,
    resume: dict | None,
    memory: dict[str, object],
    device: torch.device,
    progress: StageProgress,
    history: list[dict],
    store: RunStore,
    model: ConditionalDiffusion,
    training_set: pd.DataFrame,
    config_key: str,
    log,
):
    """Train (an out-of-memory error names the `memory` settings), publish the model and drop the
    checkpoint; return the training result and the model's fingerprint. A training that diverged
    publishes the model restored to its last good checkpoint, then re-raises `TrainingDiverged`."""
    try:
        with out_of_memory_hint("finetune", memory, device):
            result = _train_or_restart(train, resume, log)
    except TrainingDiverged:
        progress.close()
        _publish(store, model.cpu(), history, training_set, config_key)
        drop_checkpoint(store)
        log.error("training diverged; the last good checkpoint was saved to %s", store.uri(MODEL))
        raise
    progress.close()
    fingerprint = _publish(store, model.cpu(), result.history, training_set, config_key)
    drop_checkpoint(store)
    return result, fingerprint
