"""embed: one global vector per image (the collection summary's input)."""

from __future__ import annotations

import pandas as pd
from prefect import task

from gcmodels.config import ConfigError, EmbedConfig, RuntimeConfig
from gcmodels.encoders import make_encoder
from tasks.artifacts import read_images, stage_file, stopwatch
from tasks.caching import content_key
from tasks.logs import stage_logger
from tasks.models import model_stage
from tasks.storage import RunStore

@task(name="embed", task_run_name="embed")
def embed(
    out: str, shards: list[str], images_key: str, config: EmbedConfig, storage_options: dict | None = None,
    fingerprint: str | None = None, runtime: RuntimeConfig | None = None,
) -> dict:
    """Fit the configured encoder on the working images; write the embeddings under a
    content-addressed name (published as `embeddings.parquet` at the end of the run).
    `embed.method=diffusion` embeds with the fine-tuned model of `fingerprint` (the flow then runs
    this stage after finetune), on `runtime.device`."""
    if config.method == "diffusion" and fingerprint is None:
        raise ConfigError(
            "embed.method='diffusion' needs the fine-tuned model: the embed stage must run after finetune "
            "(flows.pipeline does this when embed.method is 'diffusion')"
        )
    with stopwatch() as clock:
        if config.method == "diffusion":
            with model_stage(out, fingerprint, runtime or RuntimeConfig(), storage_options) as (store, model, device):
                meta, pixels = read_images(store, shards)
                encoder = make_encoder(config, diffusion=model, device=str(device))
                vectors = encoder.fit_transform(pixels)
        else:
            store = RunStore(out, storage_options)
            meta, pixels = read_images(store, shards)
            encoder = make_encoder(config)
            vectors = encoder.fit_transform(pixels)
        name = stage_file("embeddings", content_key(images_key, config, fingerprint))
        store.write_parquet(name, pd.DataFrame({"image_id": meta["image_id"], "embedding": list(vectors)}))
        stage_logger().info("embedded %d images with %s into %d dimensions", len(meta), config.method, vectors.shape[1])
    return {
        "images": len(meta), "dim": int(vectors.shape[1]), "encoder": encoder.describe(), "embeddings": name,
        "seconds": clock["seconds"],
    }
