"""embed, checkpoint path (model.base, any family): the VAE latents of every working image, encoded
once per image and cached per shard, so fine-tuning and scoring never re-encode.

`latents/part-*-<key>.parquet`: `image_id`, `channels`, `height`, `width` (latent grid) and
`latent` (the flattened float32 latent: the mean of the VAE posterior times the checkpoint's
scaling factor). Keyed by the shard's images and by the VAE's files.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmine.tasks.infra.artifacts import keyed_part, live_labels, read_images, stopwatch, worker_name
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import out_of_memory_hint
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore, open_fs, with_retries
from gcmodels.config import ConfigError, RuntimeConfig
from gcmodels.diffusion import CheckpointInfo, LatentEncoder, inspect_base
from gcmodels.runtime import configure_torch, resolve_device

BATCH = 16  # images per VAE forward
_encoders: dict[tuple[str, str], LatentEncoder] = {}
_lock = threading.Lock()


def base_key(base: str) -> str:
    """Identity of a local checkpoint directory's VAE (names, sizes and modification times of `vae/`'s
    files): cheap to compute on a 300 MB checkpoint, and it changes when the weights are replaced."""
    vae = Path(base) / "vae"
    files = sorted(p for p in vae.rglob("*") if p.is_file()) if vae.is_dir() else []
    h = hashlib.sha256(str(Path(base).resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(vae).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_base(
    base: str,
    feature_block: int,
    *,
    class_map: str | None = None,
    resolution: int | None = None,
    resize: str | None = None,
    embed_block: int | None = None,
) -> CheckpointInfo:
    """Before any image is ingested or encoded: `base` must be a complete directory of a supported
    family (read from its model_index.json and component configs), `feature_block`
    (rank.feature_block) one of its feature blocks (UNet decoder blocks, transformer blocks),
    `class_map` (model.class_map) given only to a class-conditional model and valid for it, and the
    working images (`resolution`, `resize`) of the size a fixed-size model (DiT) needs, and
    `embed_block` (embed.diffusion_block, when the collection is embedded with the model's
    features) one of its feature blocks too. ConfigError naming the setting and the problem otherwise; returns what the checkpoint is."""
    try:
        info = inspect_base(base)
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None
    n = info.feature_blocks
    for setting, block in (("rank.feature_block", feature_block), ("embed.diffusion_block", embed_block)):
        if block is not None and not -n <= block < n:
            raise ConfigError(
                f"{setting} ({block}) must index one of the {n} {info.block_name}s of the {info.title} "
                f"model.base {base} (from {-n} to {n - 1})"
            )
    if class_map is not None:
        if info.conditioning != "class":
            raise ConfigError(
                f"model.class_map ({class_map}) applies to class-conditional checkpoints (DiT); model.base {base} is "
                f"{info.title}, conditioned on prompts (model.prompt_template)"
            )
        read_class_map(class_map, info)
    if info.fixed_resolution and resolution is not None:
        if resolution != info.native_resolution or resize != "square":
            raise ConfigError(
                f"model.base {base} is a {info.title} of fixed sample size: working images must be square at "
                f"{info.native_resolution} px (data.resolution={info.native_resolution}, data.resize=square), got "
                f"data.resolution={resolution}, data.resize={resize}"
            )
    return info


def check_class_labels(
    info: CheckpointInfo,
    class_map: str | None,
    labels: list[str],
    storage_options: dict | None = None,
    multi_label: int = 0,
) -> None:
    """Right after ingest, before any latent is encoded: a class-conditional checkpoint (DiT) needs a
    class for every given label (`labels`; none = the run would condition on cluster pseudo-labels,
    which have no class), and one label per image (`multi_label`: images with several):
    ConfigError naming the labels otherwise."""
    from gcmodels.diffusion.dit import class_ids_of

    if multi_label:
        raise ConfigError(
            f"model.base {info.directory} is a {info.title}, conditioned on one class per image, but {multi_label} "
            "image(s) carry several labels: give one label per image (or data.label_separator='' if the separator "
            "is part of your labels), or use a text-conditioned model.base (Stable Diffusion, SDXL, SD3) or none"
        )
    if not labels:
        raise ConfigError(
            f"model.base {info.directory} is a {info.title}, conditioned on its own classes: give labels (LABELS, a folder "
            "per label) that are class ids or mapped by model.class_map; cluster pseudo-labels have no class"
        )
    mapping = read_class_map(class_map, info, storage_options) if class_map is not None else None
    try:
        class_ids_of(sorted(labels), info.num_classes or 0, mapping)
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None


def read_class_map(uri: str, info: CheckpointInfo, storage_options: dict | None = None) -> dict[str, int]:
    """label -> class id from the CSV `uri` (columns ``label,class_id``), checked against the
    checkpoint `info` (ids in 0 .. num_classes - 1, one id per label, one label per id); ConfigError
    naming the file and the bad rows otherwise."""
    from gcmodels.diffusion.dit import validate_class_map

    try:  # through gcmine's storage layer: its retry policy, and no policy entry handed to pandas
        fs, path = open_fs(uri, storage_options)
        raw = with_retries(fs, f"reading {uri}", fs.cat_file, path)
        table = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ConfigError(f"model.class_map: cannot read {uri} as a CSV ({type(err).__name__}: {err})") from None
    missing = [c for c in ("label", "class_id") if c not in table.columns]
    if missing:
        raise ConfigError(
            f"model.class_map: {uri} needs the columns label,class_id; missing {missing}, found {list(table.columns)}"
        )
    try:
        return validate_class_map(list(zip(table["label"], table["class_id"])), info.num_classes or 0)
    except ValueError as err:
        raise ConfigError(f"model.class_map: {uri}: {err}") from None


def _encoder(base: str, device: torch.device) -> LatentEncoder:
    key = (str(Path(base).resolve()), str(device))
    with _lock:
        if key not in _encoders:
            _encoders.clear()
            try:  # the whole layout first: a broken checkpoint fails before any image is encoded
                inspect_base(base)
                _encoders[key] = LatentEncoder.from_base(base).to(device)
            except ValueError as err:  # not a supported checkpoint: name what is missing
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
    out: str,
    shard: dict,
    base: str,
    vae_key: str,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
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
