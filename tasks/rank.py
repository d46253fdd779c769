"""rank: top non-overlapping patches per image (per shard), then visual elements per label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmodels.config import RankConfig, RuntimeConfig
from gcmodels.elements import mine_elements
from gcmodels.patches import box_mean, scale_boxes, top_patches
from tasks.artifacts import (
    ELEMENT_COLUMNS, ELEMENTS, MANIFEST, PATCH_COLUMNS, PATCHES, keyed_part, live_rows, read_images, stopwatch, unpack_maps,
    worker_name,
)
from tasks.caching import content_key
from tasks.logs import stage_logger
from tasks.models import model_stage
from tasks.storage import RunStore

CHUNK = 64  # images per feature forward batch


@task(name="rank", task_run_name="rank[{shard[name]}]")
def rank_shard(
    out: str, shard: dict, maps: str, fingerprint: str, patch_size: int, config: RankConfig, runtime: RuntimeConfig,
    storage_options: dict | None = None,
) -> dict:
    """Top `per_image` patches of each image of the shard (maps from artifact `maps`), with their
    diffusion features, written to `patch_candidates/part-*-<key>.parquet`."""
    name = shard["name"]
    with stopwatch() as clock, model_stage(out, fingerprint, runtime, storage_options) as (store, model, device):
        maps_df = store.read_parquet(maps)
        maps = torch.from_numpy(unpack_maps(maps_df))  # (N, h, w)
        n, h, w = maps.shape
        boxes, scores = top_patches(maps, patch_size, config.per_image)  # (N, k, 4) in map pixels
        meta, pixels = read_images(store, [name])
        pixels = pixels[meta.reset_index(drop=True).set_index("image_id").index.get_indexer(maps_df["image_id"])]
        res = pixels.shape[1]
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        cond = model.label_index(list(maps_df["label"]))
        g = torch.Generator().manual_seed(config.seed)
        noise = torch.randn((config.feature_draws, 3, res, res), generator=g).to(device)
        t = min(int(config.feature_t * model.num_train_timesteps), model.num_train_timesteps - 1)
        feats = []
        with torch.inference_mode():
            for start in range(0, n, CHUNK):
                sl = slice(start, start + CHUNK)
                fmap = model.decoder_features(model.encode(images[sl]), cond[sl].to(device), t, noise, config.feature_block)
                fb = scale_boxes(boxes[sl].numpy(), (w, h), (fmap.shape[-1], fmap.shape[-2]))
                feats.append(box_mean(fmap, torch.from_numpy(fb).to(device)).cpu())
        features = torch.cat(feats).numpy() if feats else np.zeros((0, config.per_image, 1), np.float32)
        sizes = live_rows(store.read_parquet(MANIFEST, ["image_id", "width", "height", "status"])).reindex(maps_df["image_id"])
        wid = sizes["width"].to_numpy(np.int64)[:, None]
        hei = sizes["height"].to_numpy(np.int64)[:, None]
        orig = scale_boxes(boxes.numpy(), (w, h), (wid, hei))  # (N, k, 4) original pixels
        k = boxes.shape[1]
        valid = np.isfinite(scores.numpy()).reshape(-1)
        table = pd.DataFrame(
            {
                "image_id": np.repeat(maps_df["image_id"].to_numpy(), k),
                "label": np.repeat(maps_df["label"].to_numpy(), k),
                "rank": np.tile(np.arange(k), n),
                **{c: orig[..., i].reshape(-1) for i, c in enumerate(["x0", "y0", "x1", "y1"])},
                **{c: boxes.numpy()[..., i].reshape(-1) for i, c in enumerate(["wx0", "wy0", "wx1", "wy1"])},
                "typicality": scores.numpy().reshape(-1),
                "feature": list(features.reshape(n * k, -1).astype(np.float32)),
            }
        )[valid]
        candidates = keyed_part("patch_candidates", name, content_key(maps, fingerprint, patch_size, config))
        store.write_parquet(candidates, table)
    return {"shard": name, "patches": int(valid.sum()), "candidates": candidates, "seconds": clock["seconds"], "worker": worker_name()}


@task(name="elements", task_run_name="elements")
def elements(out: str, candidates: list[str], config: RankConfig, storage_options: dict | None = None) -> dict:
    """Keep each label's `per_label` most typical patches (from the shards' `candidates`
    artifacts), cluster them into elements, rank the elements; write `patches.parquet` and
    `elements.parquet`."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        cand = pd.concat([store.read_parquet(c) for c in candidates], ignore_index=True)
        cand["element"] = -1
        cand["distance"] = np.nan
        rows = []
        for label, group in cand.groupby("label", sort=True):
            top = group.nlargest(config.per_label, "typicality", keep="first")
            found = mine_elements(np.stack(top["feature"].to_numpy()), top["typicality"].to_numpy(), config.elements, seed=config.seed)
            cand.loc[top.index, "element"] = found.assignment
            cand.loc[top.index, "distance"] = found.distance
            for e in range(len(found.score)):
                rows.append({"label": label, "element": e, "rank": e, "score": float(found.score[e]), "size": int(found.size[e])})
            log.info(
                "label %r: %d patches kept of %d, %d elements (top score %.4g, %d patches)",
                label, len(top), len(group), len(found.score), found.score[0], found.size[0],
            )
        patches = cand[PATCH_COLUMNS + ["distance"]].sort_values(["label", "image_id", "rank"], kind="stable")
        store.write_parquet(PATCHES, patches.reset_index(drop=True))
        store.write_parquet(ELEMENTS, pd.DataFrame(rows, columns=ELEMENT_COLUMNS))
    return {"labels": int(cand["label"].nunique()), "patches": len(cand), "elements": len(rows), "seconds": clock["seconds"]}
