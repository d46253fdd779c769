"""rank: top non-overlapping patches per image (per shard), then visual elements per label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from prefect import task

from gcmodels.config import RankConfig, RuntimeConfig
from gcmodels.elements import mine_elements
from gcmodels.patches import box_mean, scale_boxes, top_patches
from tasks.artifacts import (
    ELEMENT_COLUMNS, ELEMENTS, MANIFEST, PATCH_COLUMNS, PATCHES, keyed_part, live_rows, read_images, stopwatch,
    unpack_map_rows, worker_name,
)
from tasks.caching import content_key
from tasks.latents import read_latents, shape_groups
from tasks.logs import stage_logger
from tasks.models import model_stage
from tasks.storage import RunStore

CHUNK = 64  # images per feature forward batch


def _model_inputs(store: RunStore, model, name: str, ids: list[str], latents: str | None) -> list[np.ndarray]:
    """Model-space inputs x0 (C, h, w) of images `ids`: the working images (pixel model) or the
    cached VAE latents `latents` (model.base)."""
    if latents is not None:
        found = read_latents(store, [latents], only=set(ids))
        return [found[i] for i in ids]
    meta, pixels = read_images(store, [name])
    pixels = pixels[meta.reset_index(drop=True).set_index("image_id").index.get_indexer(ids)]
    return list(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


@task(name="rank", task_run_name="rank[{shard[name]}]")
def rank_shard(
    out: str, shard: dict, maps: str, fingerprint: str, patch_size: int, config: RankConfig, runtime: RuntimeConfig,
    storage_options: dict | None = None, latents: str | None = None,
) -> dict:
    """Top `per_image` patches of each image of the shard (maps from artifact `maps`), with their
    diffusion features, written to `patch_candidates/part-*-<key>.parquet`.

    Maps at latent resolution (model.base) are upsampled bilinearly to the working image first,
    so patches are chosen, and measured, in working pixels; features come from the UNet decoder
    with the label prompt, computed once per image for all its patches."""
    name = shard["name"]
    with stopwatch() as clock, model_stage(out, fingerprint, runtime, storage_options) as (store, model, device):
        maps_df = store.read_parquet(maps)
        ids = list(maps_df["image_id"])
        map_list = unpack_map_rows(maps_df)
        inputs = _model_inputs(store, model, name, ids, latents)
        cond = model.label_index(list(maps_df["label"]))
        factor = int(getattr(model, "latent_factor", 1))
        t = min(int(config.feature_t * model.num_train_timesteps), model.num_train_timesteps - 1)
        n, k = len(ids), config.per_image
        boxes = np.full((n, k, 4), -1, np.int64)  # working pixels
        work = np.zeros((n, 2), np.int64)  # working (width, height) of each image
        scores = np.full((n, k), np.nan, np.float32)
        features: np.ndarray | None = None
        for group in shape_groups(map_list).values():
            idx = np.asarray(group)
            m = torch.from_numpy(np.stack([map_list[i] for i in idx]))  # (g, h, w)
            x0 = torch.from_numpy(np.stack([inputs[i] for i in idx]))  # (g, C, h', w')
            size = (x0.shape[-2] * factor, x0.shape[-1] * factor)  # working (H, W)
            if tuple(m.shape[-2:]) != size:  # latent-resolution maps -> the working image (bilinear)
                m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            b, sc = top_patches(m, patch_size, k)
            boxes[idx], scores[idx], work[idx] = b.numpy(), sc.numpy(), (size[1], size[0])
            g = torch.Generator().manual_seed(config.seed)  # the same noise for every image of a shape
            noise = torch.randn((config.feature_draws, *x0.shape[1:]), generator=g).to(device)
            with torch.inference_mode():
                for start in range(0, len(idx), CHUNK):
                    sl = slice(start, start + CHUNK)
                    x = x0[sl].to(device)
                    x = model.encode(x) if x.dtype == torch.uint8 else x
                    fmap = model.decoder_features(x, cond[idx[sl]].to(device), t, noise, config.feature_block)
                    fb = scale_boxes(b[sl].numpy(), (size[1], size[0]), (fmap.shape[-1], fmap.shape[-2]))
                    part = box_mean(fmap, torch.from_numpy(fb).to(device)).float().cpu().numpy()
                    if features is None:
                        features = np.zeros((n, k, part.shape[-1]), np.float32)
                    features[idx[sl]] = part
        if features is None:
            features = np.zeros((0, k, 1), np.float32)
        sizes = live_rows(store.read_parquet(MANIFEST, ["image_id", "width", "height", "status"])).reindex(maps_df["image_id"])
        wid = sizes["width"].to_numpy(np.int64)[:, None]
        hei = sizes["height"].to_numpy(np.int64)[:, None]
        orig = scale_boxes(boxes, (work[:, :1], work[:, 1:]), (wid, hei))  # (N, k, 4) original pixels
        valid = np.isfinite(scores).reshape(-1)
        table = pd.DataFrame(
            {
                "image_id": np.repeat(maps_df["image_id"].to_numpy(), k),
                "label": np.repeat(maps_df["label"].to_numpy(), k),
                "rank": np.tile(np.arange(k), n),
                **{c: orig[..., i].reshape(-1) for i, c in enumerate(["x0", "y0", "x1", "y1"])},
                **{c: boxes[..., i].reshape(-1) for i, c in enumerate(["wx0", "wy0", "wx1", "wy1"])},
                "typicality": scores.reshape(-1),
                "feature": list(features.reshape(n * k, features.shape[-1]).astype(np.float32)),  # n may be 0 (no labelled image)
            }
        )[valid]
        candidates = keyed_part("patch_candidates", name, content_key(maps, fingerprint, patch_size, config, latents))
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
