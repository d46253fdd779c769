"""embed, Stable Diffusion path (model.base): the VAE latents of every working image, encoded
once per image and cached per shard, so fine-tuning and scoring never re-encode.

`latents/part-*-<key>.parquet`: `image_id`, `channels`, `height`, `width` (latent grid) and
`latent` (the flattened float32 latent: the mean of the VAE posterior times the checkpoint's
scaling factor). Keyed by the shard's images and by the VAE's files.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmodels.config import ConfigError, RuntimeConfig
from gcmodels.runtime import configure_torch, resolve_device
from gcmodels.sd import LatentEncoder, check_sd_directory, decoder_block_count
from tasks.artifacts import keyed_part, live_labels, read_images, stopwatch, worker_name
from tasks.caching import content_key
from tasks.errors import out_of_memory_hint
from tasks.gpu import gpu_slot
from tasks.logs import stage_logger
from tasks.storage import RunStore

BATCH = 16  # images per VAE forward
_encoders: dict[tuple[str, str], LatentEncoder] = {}
_lock = threading.Lock()


def base_key(base: str) -> str:
    """Identity of a local SD directory's VAE (names, sizes and modification times of `vae/`'s
    files): cheap to compute on a 300 MB checkpoint, and it changes when the weights are replaced."""
    vae = Path(base) / "vae"
    files = sorted(p for p in vae.rglob("*") if p.is_file()) if vae.is_dir() else []
    h = hashlib.sha256(str(Path(base).resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(vae).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_base(base: str, feature_block: int) -> None:
    """Before any image is encoded or any step trained: `base` must be a complete SD directory and
    `feature_block` (rank.feature_block) one of its UNet's decoder blocks; ConfigError otherwise."""
    try:
        check_sd_directory(base)
        blocks = decoder_block_count(base)
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None
    if not -blocks <= feature_block < blocks:
        raise ConfigError(
            f"rank.feature_block ({feature_block}) must index one of the {blocks} decoder blocks of the UNet of "
            f"model.base {base} (from {-blocks} to {blocks - 1})"
        )


def _encoder(base: str, device: torch.device) -> LatentEncoder:
    key = (str(Path(base).resolve()), str(device))
    with _lock:
        if key not in _encoders:
            _encoders.clear()
            try:  # the whole layout first: a broken checkpoint fails before any image is encoded
                check_sd_directory(base)
                _encoders[key] = LatentEncoder.from_base(base).to(device)
            except ValueError as err:  # not a Stable Diffusion directory: name what is missing
                raise ConfigError(f"model.base: {err}") from None
        return _encoders[key]


def latents_frame(ids: list[str], latents: list[np.ndarray]) -> pd.DataFrame:
    """Rows of the latents artifact from per-image float32 latents (C, h, w)."""
    return pd.DataFrame(
        {
            "image_id": ids,
            "channels": np.array([z.shape[0] for z in latents], np.int32),
            "height": np.array([z.shape[1] for z in latents], np.int32),
            "width": np.array([z.shape[2] for z in latents], np.int32),
            "latent": [np.ascontiguousarray(z, np.float32).reshape(-1) for z in latents],
        }
    )


def read_latents(store: RunStore, parts: list[str], only: set[str] | None = None) -> dict[str, np.ndarray]:
    """image_id -> float32 latent (C, h, w) from the latents artifacts `parts`."""
    out: dict[str, np.ndarray] = {}
    for part in parts:
        df = store.read_parquet(part)
        for iid, c, h, w, z in zip(df["image_id"], df["channels"], df["height"], df["width"], df["latent"]):
            if only is None or iid in only:
                out[iid] = np.asarray(z, np.float32).reshape(int(c), int(h), int(w))
    return out


def read_latent_inputs(
    store: RunStore, parts: list[str], conditioning: str | None = None, *, labelled_only: bool = False
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """(image_id, label) of the live images in the latents artifacts `parts`, in artifact order,
    and their latents (C, h, w): labels from the manifest, or from the conditioning table
    `conditioning` (None = unlabelled); with `labelled_only`, the labelled images only."""
    labels = live_labels(store, conditioning)
    if labelled_only:
        labels = labels[labels.notna()]
    found = read_latents(store, parts, only=set(labels.index))
    meta = pd.DataFrame({"image_id": list(found), "label": [labels[i] for i in found]})
    return meta, list(found.values())


def shape_groups(arrays: list[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of `arrays` grouped by shape (batches of images of one aspect ratio), in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(a.shape), []).append(i)
    return groups


@task(name="latents", task_run_name="latents[{shard[name]}]")
def latents_shard(
    out: str, shard: dict, base: str, vae_key: str, runtime: RuntimeConfig, storage_options: dict | None = None,
) -> dict:
    """VAE latents of the shard's live working images (each at its own size: images that keep
    their aspect ratio are batched by size) into `latents/part-*-<key>.parquet`."""
    name = shard["name"]
    configure_torch(runtime.threads)
    device = resolve_device(runtime.device)
    with stopwatch() as clock, gpu_slot(device, runtime):
        store = RunStore(out, storage_options)
        meta, images = read_images(store, [name], ragged=True)
        encoder = _encoder(base, device)
        latents: list[np.ndarray | None] = [None] * len(images)
        short = min(min(im.shape[:2]) for im in images) if images else 0
        with out_of_memory_hint(f"latents {name}", {"data.resolution": short}, device), torch.inference_mode():
            for idx in shape_groups(images).values():
                for s in range(0, len(idx), BATCH):
                    chunk = idx[s : s + BATCH]
                    batch = torch.from_numpy(np.stack([images[i] for i in chunk]).transpose(0, 3, 1, 2).copy())
                    z = encoder.encode(batch).float().cpu().numpy()
                    for i, zi in zip(chunk, z):
                        latents[i] = zi
        path = keyed_part("latents", name, content_key(shard, vae_key))
        store.write_parquet(path, latents_frame(list(meta["image_id"]), latents))  # type: ignore[arg-type]
    stage_logger().info("encoded %d images of %s to latents in %.1f s", len(images), name, clock["seconds"])
    return {"shard": name, "latents": path, "images": len(images), "seconds": clock["seconds"], "worker": worker_name()}
