"""score: typicality maps of each image under its own label (and, with cotypicality, its
image-level typicality under every label), one task run per shard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmodels.config import RuntimeConfig, ScoreConfig
from gcmodels.cotypicality import cotypicality_frame
from gcmodels.typicality import TypicalityEstimator
from tasks.artifacts import TYPICALITY, TYPICALITY_COLUMNS, keyed_part, maps_frame, read_images, stopwatch, worker_name
from tasks.caching import content_key
from tasks.errors import out_of_memory_hint
from tasks.logs import stage_logger
from tasks.models import model_stage
from tasks.progress import StageProgress
from tasks.storage import RunStore

CHUNK = 64  # images handed to the estimator at a time (bounds memory, paces the progress bar)


def score_rows(
    ids: list[str], labels: list[str], maps: np.ndarray, vocab: list[str], cotypicality: np.ndarray | None
) -> pd.DataFrame:
    """Image-level rows of `typicality.parquet`: `image_id`, `label` (the conditioning label),
    `image_label` (the image's own label), `typicality`. One row per image (under its own label)
    or, with `cotypicality` (B, L) in `vocab` order, one row per (image, label)."""
    if cotypicality is None:
        return pd.DataFrame(
            {"image_id": ids, "label": labels, "image_label": labels, "typicality": maps.reshape(len(ids), -1).mean(1)}
        )
    frame = cotypicality_frame(ids, vocab, cotypicality)
    frame.insert(2, "image_label", np.repeat(np.asarray(labels, dtype=object), len(vocab)))
    return frame


@task(name="score", task_run_name="score[{shard[name]}]")
def score_shard(
    out: str, shard: dict, fingerprint: str, config: ScoreConfig, runtime: RuntimeConfig,
    storage_options: dict | None = None, conditioning: str | None = None,
) -> dict:
    """Typicality maps of the shard's live labelled images under their labels (from the
    conditioning table `conditioning` when given, else the manifest), with the model of
    `fingerprint`: `maps/part-*-<key>.parquet` and image-level scores `scores/part-*-<key>.parquet`
    (content-addressed by shard, labels, model and settings)."""
    name = shard["name"]
    with stopwatch() as clock, model_stage(out, fingerprint, runtime, storage_options) as (store, model, device):
        meta, pixels = read_images(store, [name], conditioning)
        keep = meta["label"].map(lambda v: isinstance(v, str)).to_numpy()
        meta, pixels = meta[keep].reset_index(drop=True), pixels[keep]
        estimator = TypicalityEstimator(
            draws=config.draws, t_min=config.t_min, t_max=config.t_max, batch_size=config.batch_size, seed=config.seed
        )
        cond = model.label_index(list(meta["label"]))
        vocab = list(model.labels)
        every = model.label_index(vocab)  # (L,) the conditioning labels of cotypicality
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        maps = np.zeros((len(meta), model.resolution, model.resolution), np.float32)
        co = np.zeros((len(meta), len(vocab)), np.float64)  # image-level T(x | label) per label
        key = "score-" + name.removesuffix(".parquet").replace("_", "-").lower()
        with StageProgress(len(meta), f"score {name}", bar=runtime.progress, key=key) as progress:
            with out_of_memory_hint(f"score {name}", {"score.batch_size": config.batch_size}, device):
                for start in range(0, len(meta), CHUNK):
                    stop = min(start + CHUNK, len(meta))
                    x0 = model.encode(images[start:stop])
                    tick = lambda k: progress.update(start + k)  # noqa: E731
                    if config.cotypicality:
                        m = estimator.cotypicality_maps(model, x0, every.to(device), progress=tick)  # (b, L, H, W)
                        co[start:stop] = m.mean((2, 3)).double().cpu().numpy()
                        own = (cond[start:stop].to(device) - 1).view(-1, 1, 1, 1).expand(-1, 1, *m.shape[2:])
                        m = m.gather(1, own)[:, 0]  # each image's map under its own label (what rank reads)
                    else:
                        m = estimator.maps(model, x0, cond[start:stop].to(device), progress=tick)
                    maps[start:stop] = m.cpu().numpy()
            progress.close()
        ids, labels = list(meta["image_id"]), list(meta["label"])
        okey = content_key(shard, fingerprint, config, conditioning)
        outputs = {"maps": keyed_part("maps", name, okey), "scores": keyed_part("scores", name, okey)}
        store.write_parquet(outputs["maps"], maps_frame(ids, labels, maps))
        store.write_parquet(outputs["scores"], score_rows(ids, labels, maps, vocab, co if config.cotypicality else None))
    seconds = clock["seconds"]
    stage_logger().info(
        "scored %d images with N=%d draws in %.1f s (%.2f images/s)", len(ids), config.draws, seconds,
        len(ids) / max(seconds, 1e-9),
    )
    return {"shard": name, "images": len(ids), **outputs, "seconds": seconds, "worker": worker_name()}


@task(name="typicality-table", task_run_name="typicality-table")
def typicality_table(out: str, scores: list[str], storage_options: dict | None = None) -> dict:
    """Gather the shards' image-level scores (`scores`: their artifact names) into `typicality.parquet`."""
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        table = pd.concat([store.read_parquet(name) for name in scores], ignore_index=True)
        store.write_parquet(TYPICALITY, table[TYPICALITY_COLUMNS])
    return {"images": len(table), "seconds": clock["seconds"]}
