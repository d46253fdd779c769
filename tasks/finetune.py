"""finetune: train the conditional diffusion model (label dropout gives the null model)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmine.tasks.infra.artifacts import MODEL, TRAINING, artifact_key, model_description, read_images, stopwatch
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import DamagedArtifact, InputError, StorageError, out_of_memory_hint
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.integrity import file_records, model_damage
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import COMPLETE, TRAINING_SET, model_fingerprint
from gcmine.tasks.infra.progress import StageProgress
from gcmine.tasks.infra.storage import RunStore, is_local, scratch_dir
from gcmine.tasks.latents import base_key, read_latent_inputs, shape_groups
from gcmodels.config import ConfigError, ModelConfig, RuntimeConfig, TrainConfig
from gcmodels.diffusion import ConditionalDiffusion, PixelDiffusion, inspect_base, load_base
from gcmodels.diffusion.training import CheckpointMismatch, TrainingDiverged, train_diffusion
from gcmodels.mining.cotypicality import stratified_split
from gcmodels.runtime import configure_torch, resolve_device, resolve_precision

CHECKPOINT = "checkpoints/finetune.pt"  # the resumable state of an unfinished training


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


def write_checkpoint(store: RunStore, payload: dict) -> None:
    """Save `payload` as `CHECKPOINT` atomically: locally torch.save to a temporary sibling renamed
    into place, on an object store a local temporary file uploaded whole (one PUT). A failed write
    (a full disk) is a `StorageError` naming the checkpoint; the previous one stays in place."""
    path = store.path(CHECKPOINT)
    if is_local(store.fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save(payload, tmp)
            os.replace(tmp, path)
        except OSError as err:
            raise _checkpoint_error(store, err) from err
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with scratch_dir("checkpoint") as tmp:
        local = Path(tmp) / "finetune.pt"
        try:
            _save(payload, local)
        except OSError as err:
            raise _checkpoint_error(store, err, staged=local) from err
        store.retrying(
            f"uploading {store.uri(CHECKPOINT)}", store.fs.put_file, str(local), path, transfer=local.stat().st_size
        )


def _checkpoint_error(store: RunStore, err: OSError, staged: Path | None = None) -> StorageError:
    where = f" (staged in {staged})" if staged is not None else ""
    return StorageError(
        err.errno or 0,
        f"writing the training checkpoint {store.uri(CHECKPOINT)}{where} failed: {err.strerror or err}; the previous "
        "checkpoint (if any) is kept: free space (or fix the cause) and run the same command again to resume from it",
    )


def _save(payload: dict, target: str | Path) -> None:
    """torch.save; a failed write is an OSError. A full disk surfaces inside torch's writer as a
    RuntimeError that names no file and is no OSError ("[enforce fail at inline_container.cc:672]
    . unexpected pos 704 vs 598", "PytorchStreamWriter failed writing file data/0", "basic_ios::
    clear: iostream error"); a payload that cannot be pickled raises other errors."""
    try:
        torch.save(payload, target)
    except RuntimeError as err:
        text = str(err).strip()
        detail = text.splitlines()[0] if text else "write failed"
        raise OSError(0, f"the write failed, is the disk full? (torch: {detail})") from err


def read_checkpoint(store: RunStore) -> dict | None:
    """The payload of `CHECKPOINT` (tensors on the CPU), or None when there is none or it cannot
    be read (a checkpoint is never worth failing a run for: the training starts afresh)."""
    if not store.exists(CHECKPOINT):
        return None
    try:
        if is_local(store.fs):
            return torch.load(store.path(CHECKPOINT), map_location="cpu", weights_only=True)
        with scratch_dir("checkpoint") as tmp:
            local = Path(tmp) / "finetune.pt"
            store.retrying(
                f"downloading {store.uri(CHECKPOINT)}",
                store.fs.get_file,
                store.path(CHECKPOINT),
                str(local),
                transfer=None,
            )
            return torch.load(local, map_location="cpu", weights_only=True)
    except StorageError:
        raise  # the store failed (not the file): the run cannot go on
    except Exception as err:
        stage_logger().warning("ignoring the unreadable checkpoint %s: %s", store.uri(CHECKPOINT), err)
        return None


def drop_checkpoint(store: RunStore) -> None:
    """Remove `CHECKPOINT` (once the model it would resume is published)."""
    if store.exists(CHECKPOINT):
        store.retrying(f"removing {store.uri(CHECKPOINT)}", store.fs.rm, store.path(CHECKPOINT))
        if is_local(store.fs):
            try:
                os.rmdir(os.path.dirname(store.path(CHECKPOINT)))  # leave no empty folder behind
            except OSError:
                pass  # not empty (something else lives there)


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


def _channels_first(stacked: np.ndarray, pixels: bool) -> np.ndarray:
    """Working images (N, H, W, 3) uint8 -> (N, 3, H, W); latents (N, C, h, w) are already so."""
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)) if pixels else stacked


def _memory_settings(model_config: ModelConfig, train_config: TrainConfig, resolution: int) -> dict[str, object]:
    """The settings an out-of-memory error in fine-tuning names, first the one to lower first."""
    out: dict[str, object] = {"train.batch_size": train_config.batch_size, "data.resolution": resolution}
    if model_config.base is not None:
        if not train_config.gradient_checkpointing:
            out["train.gradient_checkpointing (set true)"] = False
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
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        if latents is None:  # working images, each at its own size (data.resize=short_side keeps the aspect ratio)
            meta, pixels = read_images(store, shards, conditioning, ragged=True)
        else:  # model.base: the cached latents of every live image (unlabelled ones train the null prompt)
            meta, pixels = read_latent_inputs(store, latents, conditioning)
        vocab = sorted({lab for lab in meta["label"] if isinstance(lab, str)})
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
        training_set = meta[meta["label"].map(lambda v: isinstance(v, str))][["image_id", "label"]].reset_index(
            drop=True
        )
        checkpoint, class_map = checkpoint_of(model_config, storage_options)
        # working images that keep an oblong original's aspect ratio (data.resize=short_side) key
        # the model too: a change of resize policy retrains it (squares are the same under both)
        oblong = ["aspect kept"] if latents is None and any(p.shape[0] != p.shape[1] for p in pixels) else []
        config_key = content_key(
            resolution,
            model_config,
            train_config.model_dump(exclude={"retrain_fraction"}),
            *oblong,
            *([{"holdout": holdout, "seed": holdout_seed}] if holdout > 0 else []),
            *([base_key(model_config.base)] if model_config.base is not None else []),
            *([sorted(class_map.items())] if class_map else []),
        )
        reused, why = reuse_decision(store, training_set, config_key, train_config.retrain_fraction)
        if reused is not None:
            log.info("finetune reused the existing model %s: %s", reused, why)
            return {
                "fingerprint": reused,
                "labels": vocab,
                "reused": True,
                "reason": why,
                "device": str(device),
                "held_out": len(held),
                "seconds": 0.0,
            }
        log.info("training a new model: %s", why)
        labels = [lab if isinstance(lab, str) else None for lab in meta["label"]]
        data_key = content_key(meta["image_id"].tolist(), labels)  # the images and labels, in training order
        with gpu_slot(device, runtime):  # one training per card (nothing taken on CPU)
            generator = torch.Generator().manual_seed(train_config.seed)
            model = _new_model(vocab, resolution, model_config, train_config, generator, class_map).to(device)
            if train_config.gradient_checkpointing:
                model.enable_gradient_checkpointing()
            groups = list(shape_groups(pixels).values())
            if latents is None and len(groups) == 1:  # working images of one shape (squares): (N, 3, H, W) uint8
                cond = model.label_index(labels)
                images = torch.from_numpy(_channels_first(np.stack(pixels), True))
            else:  # batched by shape (aspect ratio): lists of (n_i, C, h, w) and (n_i,)
                all_cond = model.label_index(labels)
                images = [
                    torch.from_numpy(_channels_first(np.stack([pixels[i] for i in idx]), latents is None))
                    for idx in groups
                ]
                cond = [all_cond[idx] for idx in groups]
                log.info(
                    "%d working shapes batched apart (the largest %d images, %d shape(s) smaller than a batch of %d)",
                    len(groups),
                    max(map(len, groups)),
                    sum(len(g) < train_config.batch_size for g in groups),
                    train_config.batch_size,
                )
            steps = train_config.budget(len(meta))
            trainable = getattr(model, "trainable_parameters", model.parameters)()
            n_params = sum(p.numel() for p in trainable)
            log.info(
                "training %.2fM parameters (%s) on %d images, %d labels, %d steps of batch %d on %s (%s)",
                n_params / 1e6,
                model_description(model_config, train_config, checkpoint),
                len(meta),
                len(vocab),
                steps,
                train_config.batch_size,
                device,
                precision,
            )
            resume = None
            saved = read_checkpoint(store)
            if saved is not None:
                if saved.get("config_key") == config_key and saved.get("data_key") == data_key:
                    resume = saved["state"]
                    log.info("resuming from step %d (%s)", resume["step"], store.uri(CHECKPOINT))
                else:
                    log.info("ignoring the checkpoint of another training (settings or training set changed)")
                del saved

            def on_checkpoint(state: dict) -> None:
                began = time.perf_counter()
                write_checkpoint(store, {"config_key": config_key, "data_key": data_key, "state": state})
                log.info(
                    "checkpoint at step %d: %.1f s to copy the state to the host, %.1f s to write %s",
                    state["step"],
                    state.get("host_seconds", 0.0),
                    time.perf_counter() - began,
                    store.uri(CHECKPOINT),
                )

            progress = StageProgress(
                steps, "finetune", bar=runtime.progress, key=artifact_key(out, "finetune-progress")
            )

            def on_step(row: dict) -> None:
                progress.update(row["step"] + 1, loss=row["loss"])

            history: list[dict] = []

            def train(resume: dict | None):
                history[:] = [] if resume is None else [dict(r) for r in resume["history"]]
                return train_diffusion(
                    model,
                    images,
                    cond,
                    steps=steps,
                    batch_size=train_config.batch_size,
                    lr=train_config.lr,
                    warmup_steps=train_config.warmup_steps,
                    weight_decay=train_config.weight_decay,
                    grad_clip=train_config.grad_clip,
                    label_dropout=train_config.label_dropout,
                    checkpoint_every=train_config.checkpoint_every,
                    generator=generator,
                    checkpoint_seconds=None
                    if train_config.checkpoint_minutes is None
                    else 60.0 * train_config.checkpoint_minutes,
                    max_seconds=None if train_config.minutes is None else 60.0 * train_config.minutes,
                    callback=lambda row: (history.append(row), on_step(row)),
                    lr_schedule=train_config.lr_schedule,
                    ema_decay=train_config.ema_decay,
                    precision=precision,
                    on_checkpoint=on_checkpoint,
                    resume=resume,
                )

            try:
                with out_of_memory_hint("finetune", _memory_settings(model_config, train_config, resolution), device):
                    try:
                        result = train(resume)
                    except CheckpointMismatch as err:  # raised before anything changed (e.g. another precision)
                        log.warning("not resuming: %s; training from the start", err)
                        result = train(None)
            except TrainingDiverged:
                progress.close()
                _publish(store, model.cpu(), history, training_set, config_key)
                drop_checkpoint(store)
                log.error("training diverged; the last good checkpoint was saved to %s", store.uri(MODEL))
                raise
            progress.close()
            fingerprint = _publish(store, model.cpu(), result.history, training_set, config_key)
            drop_checkpoint(store)
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
        "reused": False,
        "reason": why,
        "held_out": len(held),
        "seconds": clock["seconds"],
    }
