"""embed: one global vector per image (the collection summary's input).

Two shapes, by the encoder (`gcmodels.embedding.encoders.fits_on_collection`):

- fitted on the collection (pca, autoencoder, vae): one task, `embed`, fits the encoder on all
  images and embeds them - the fit is global (the PCA axes, the autoencoder's weights depend on
  every image), so it cannot be split over shards;
- fitted already (clip, diffusion): one `embed_shard` task run per shard, mapped over the task
  runner's workers like score (each worker loads the model itself: the fine-tuned model through
  `model_stage`, CLIP once per process here), then `embeddings_table` gathers the parts, in
  shard order, into the same embeddings table `embed` writes.
"""

from __future__ import annotations

import threading

import pandas as pd
from prefect import task

from gcmine.tasks.infra.artifacts import keyed_part, read_images, stage_file, stopwatch, worker_name
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import model_stage
from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import ConfigError, EmbedConfig, RuntimeConfig
from gcmodels.embedding.encoders import fits_on_collection, make_encoder

_clip_cache: dict[tuple, object] = {}
_clip_lock = threading.Lock()


def _needs_model(config: EmbedConfig, fingerprint: str | None) -> None:
    if config.method == "diffusion" and fingerprint is None:
        raise ConfigError(
            "embed.method='diffusion' needs the fine-tuned model: the embed stage must run after finetune, per "
            "shard (embed_shard), as gcmine.flows.pipeline does when embed.method is 'diffusion'"
        )


def clip_encoder(config: EmbedConfig):
    """The fitted (loaded) CLIP encoder of `config`, loaded once per process and kept (one at a
    time): every shard a worker embeds reuses it."""
    key = (config.clip_path, config.batch_size)
    with _clip_lock:
        if key not in _clip_cache:
            encoder = make_encoder(config).fit()
            _clip_cache.clear()
            _clip_cache[key] = encoder
        return _clip_cache[key]


def embeddings_name(images_key: str, config: EmbedConfig, fingerprint: str | None) -> str:
    """Content-addressed name of the embeddings table of the live images `images_key`."""
    return stage_file("embeddings", content_key(images_key, config, fingerprint))


@task(name="embed", task_run_name="embed")
def embed(
    out: str, shards: list[str], images_key: str, config: EmbedConfig, storage_options: dict | None = None
) -> dict:
    """Fit the configured encoder on the working images and embed them; write the embeddings
    under a content-addressed name (published as `embeddings.parquet` at the end of the run).
    `embed.method=diffusion` needs the fine-tuned model and runs per shard (`embed_shard`)."""
    _needs_model(config, None)
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        meta, pixels = read_images(store, shards)
        if len(meta) < 2:
            raise InputError(
                f"only {len(meta)} usable image(s) in the collection: summarising and mining it needs at least 2 "
                "(see manifest.parquet, columns status and reason, for the rejected ones)"
            )
        encoder = make_encoder(config)
        vectors = encoder.fit_transform(pixels)
        name = embeddings_name(images_key, config, None)
        store.write_parquet(name, pd.DataFrame({"image_id": meta["image_id"], "embedding": list(vectors)}))
        stage_logger().info("embedded %d images with %s into %d dimensions", len(meta), config.method, vectors.shape[1])
    return {
        "images": len(meta),
        "dim": int(vectors.shape[1]),
        "encoder": encoder.describe(),
        "embeddings": name,
        "seconds": clock["seconds"],
    }


@task(name="embed-shard", task_run_name="embed[{shard[name]}]")
def embed_shard(
    out: str,
    shard: dict,
    config: EmbedConfig,
    fingerprint: str | None = None,
    runtime: RuntimeConfig | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Embed the live images of one shard with an encoder that needs no fit on the collection
    (clip, or diffusion with the fine-tuned model of `fingerprint`, on `runtime.device`) into
    `embeddings/part-*-<key>.parquet` (content-addressed by shard, config and model)."""
    if fits_on_collection(config.method):
        raise ConfigError(
            f"embed.method={config.method!r} is fitted on the whole collection: it runs as the single embed task, not per shard"
        )
    _needs_model(config, fingerprint)
    name = shard["name"]
    with stopwatch() as clock:
        if config.method == "diffusion":
            with model_stage(out, fingerprint, runtime or RuntimeConfig(), storage_options) as (store, model, device):
                meta, pixels = read_images(store, [name])
                encoder = make_encoder(config, diffusion=model, device=str(device)).fit()
                vectors = encoder.transform(pixels)
        else:
            store = RunStore(out, storage_options)
            meta, pixels = read_images(store, [name])
            encoder = clip_encoder(config)
            vectors = encoder.transform(pixels)
        part = keyed_part("embeddings", name, content_key(shard, config, fingerprint))
        store.write_parquet(part, pd.DataFrame({"image_id": meta["image_id"], "embedding": list(vectors)}))
    stage_logger().info("embedded %d images of %s with %s in %.1f s", len(meta), name, config.method, clock["seconds"])
    return {
        "shard": name,
        "images": len(meta),
        "dim": int(vectors.shape[1]),
        "encoder": encoder.describe(),
        "embeddings": part,
        "seconds": clock["seconds"],
        "worker": worker_name(),
    }


@task(name="embeddings-table", task_run_name="embeddings-table")
def embeddings_table(
    out: str,
    parts: list[str],
    images_key: str,
    config: EmbedConfig,
    fingerprint: str | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Gather the shards' embeddings (`parts`: their artifact names, in shard order) into the
    embeddings table `embed` would write for the same images, config and model."""
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        table = pd.concat([store.read_parquet(p) for p in parts], ignore_index=True)
        if not table["image_id"].is_unique:
            raise ValueError(f"embeddings parts {parts}: an image is embedded twice")
        name = embeddings_name(images_key, config, fingerprint)
        store.write_parquet(name, table)
    return {"images": len(table), "embeddings": name, "seconds": clock["seconds"]}
