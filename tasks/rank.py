"""rank: top non-overlapping patches per image (per shard), then visual elements per label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from prefect import task

from gcmine.tasks.infra.artifacts import (
    ELEMENT_COLUMNS,
    ELEMENTS,
    MANIFEST,
    PATCH_COLUMNS,
    PATCHES,
    keyed_part,
    live_rows,
    read_images,
    stopwatch,
    unpack_map_rows,
    worker_name,
)
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import out_of_memory_hint
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import model_stage
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.latents import read_latents, shape_groups
from gcmodels.config import RankConfig, RuntimeConfig
from gcmodels.mining.elements import label_specificity, mine_elements
from gcmodels.mining.patches import box_mean, scale_boxes, top_patches, typical_weights


def _model_inputs(store: RunStore, model, name: str, ids: list[str], latents: str | None) -> list[np.ndarray]:
    """Model-space inputs x0 (C, h, w) of images `ids`: the working images (pixel model) or the
    cached VAE latents `latents` (model.base)."""
    if latents is not None:
        found = read_latents(store, [latents], only=set(ids))
        return [found[i] for i in ids]
    meta, pixels = read_images(store, [name], ragged=True)  # each at its own working size
    where = meta.reset_index(drop=True).set_index("image_id").index.get_indexer(ids)
    return [np.ascontiguousarray(pixels[i].transpose(2, 0, 1)) for i in where]


@task(name="rank", task_run_name="rank[{shard[name]}]")
def rank_shard(
    out: str,
    shard: dict,
    maps: str,
    fingerprint: str,
    patch_size: int,
    config: RankConfig,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
    latents: str | None = None,
) -> dict:
    """Top `per_image` patches of each image of the shard (maps from artifact `maps`), with their
    diffusion features, written to `patch_candidates/part-*-<key>.parquet`.

    Maps at latent resolution (model.base, model.latent_factor > 1) are upsampled bilinearly to the working image first,
    so patches are chosen, and measured, in working pixels; features come from the UNet decoder
    with the label prompt, computed once per image for all its patches (averaged over each patch,
    or with `config.feature_pool` "typical" weighted by the map's excess over the image's median),
    at most `config.feature_batch` UNet inputs (images x feature draws) per forward. Only the patches
    that can still be among their label's `per_label` best (those of the shard's own best) keep
    their feature: the others are stored with an empty one, so the elements stage never holds
    more than `per_label` features per label."""
    name = shard["name"]
    chunk = max(1, config.feature_batch // config.feature_draws)  # images per feature forward
    with (
        stopwatch() as clock,
        model_stage(out, fingerprint, runtime, storage_options, hold_gpu=False) as (store, model, device),
        out_of_memory_hint(f"rank {name}", {"rank.feature_batch": config.feature_batch}, device),
    ):
        maps_df = store.read_parquet(maps)
        ids = list(maps_df["image_id"])
        map_list = unpack_map_rows(maps_df)
        inputs = _model_inputs(store, model, name, ids, latents)
        cond = model.label_index(list(maps_df["label"]))
        factor = model.latent_factor
        t = min(int(config.feature_t * model.num_train_timesteps), model.num_train_timesteps - 1)
        n, k = len(ids), config.per_image
        boxes = np.full((n, k, 4), -1, np.int64)  # working pixels
        work = np.zeros((n, 2), np.int64)  # working (width, height) of each image
        scores = np.full((n, k), np.nan, np.float32)
        features: np.ndarray | None = None
        with gpu_slot(device, runtime):  # the card is held for the features only, not the reading or writing
            for group in shape_groups(map_list).values():
                idx = np.asarray(group)
                m = torch.from_numpy(np.stack([map_list[i] for i in idx]))  # (g, h, w)
                x0 = torch.from_numpy(np.stack([inputs[i] for i in idx]))  # (g, C, h', w')
                f = 1 if x0.dtype == torch.uint8 else factor  # working images, or cached VAE latents
                size = (x0.shape[-2] * f, x0.shape[-1] * f)  # working (H, W)
                if tuple(m.shape[-2:]) != size:  # latent-resolution maps -> the working image (bilinear)
                    m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                b, sc = top_patches(m, patch_size, k)
                boxes[idx], scores[idx], work[idx] = b.numpy(), sc.numpy(), (size[1], size[0])
                g = torch.Generator().manual_seed(config.seed)  # the same noise for every image of a shape
                space = model.model_shape(*size) if x0.dtype == torch.uint8 else x0.shape[1:]
                noise = torch.randn((config.feature_draws, *space), generator=g).to(device)
                with torch.inference_mode():
                    for start in range(0, len(idx), chunk):
                        sl = slice(start, start + chunk)
                        x = x0[sl].to(device)
                        x = model.encode(x) if x.dtype == torch.uint8 else x
                        fmap = model.decoder_features(x, cond[idx[sl]].to(device), t, noise, config.feature_block)
                        fb = scale_boxes(b[sl].numpy(), (size[1], size[0]), (fmap.shape[-1], fmap.shape[-2]))
                        weights = (
                            typical_weights(m[sl], tuple(fmap.shape[-2:])).to(device)
                            if config.feature_pool == "typical"
                            else None
                        )
                        part = box_mean(fmap, torch.from_numpy(fb).to(device), weights).float().cpu().numpy()
                        if features is None:
                            features = np.zeros((n, k, part.shape[-1]), np.float32)
                        features[idx[sl]] = part
        if features is None:
            features = np.zeros((0, k, 1), np.float32)
        sizes = live_rows(store.read_parquet(MANIFEST, ["image_id", "width", "height", "status"])).reindex(
            maps_df["image_id"]
        )
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
                "draws": np.repeat(
                    maps_df["draws"].to_numpy(np.int64) if "draws" in maps_df else np.zeros(n, np.int64), k
                ),
                "top_patch_se": np.repeat(
                    maps_df["top_patch_se"].to_numpy(np.float64) if "top_patch_se" in maps_df else np.full(n, np.nan), k
                ),
                "feature": list(
                    features.reshape(n * k, features.shape[-1]).astype(np.float32)
                ),  # n may be 0 (no labelled image)
            }
        )[valid].reset_index(drop=True)
        kept = table.index.isin(_top_per_label(table, config.per_label))
        table["feature"] = [f if keep else _NO_FEATURE for f, keep in zip(table["feature"], kept)]
        candidates = keyed_part("patch_candidates", name, content_key(maps, fingerprint, patch_size, config, latents))
        store.write_parquet(candidates, table)
    return {
        "shard": name,
        "patches": int(valid.sum()),
        "candidates": candidates,
        "seconds": clock["seconds"],
        "worker": worker_name(),
    }


def _with_draws(table: pd.DataFrame, patches: pd.DataFrame) -> pd.DataFrame:
    """The elements with the Monte Carlo precision of their patches: `draws`, the mean draws a
    member patch's image was scored with (N, or fewer with adaptive scoring), and `patch_se`, the
    median over the member patches' images of the standard error of their top patch's score
    (adaptive scoring measures it; NaN otherwise)."""
    members = patches[patches["element"] >= 0]
    stats = members.groupby(["label", "element"]).agg(
        draws=("draws", "mean"),
        patch_se=("top_patch_se", lambda v: float(np.nanmedian(v)) if v.notna().any() else np.nan),
    )
    if table.empty:
        return pd.DataFrame(columns=ELEMENT_COLUMNS)
    table = table.join(stats, on=["label", "element"])
    return table[ELEMENT_COLUMNS].astype(
        {"draws": np.float64, "patch_se": np.float64, "specificity": np.float64, "shared": bool}
    )


_NO_FEATURE = np.zeros(0, np.float32)  # the feature of a candidate that cannot reach its label's top


def _top_per_label(table: pd.DataFrame, k: int) -> pd.Index:
    """Index of each label's `k` most typical rows of `table`, ties to the earlier row: the rows
    `groupby("label")` + `nlargest(k, "typicality", keep="first")` keeps, in the same order
    (typicality descending, then table order)."""
    ranked = table.sort_values("typicality", ascending=False, kind="stable")
    return ranked.groupby("label", sort=False).head(k).index


def _best_candidates(store: RunStore, candidates: list[str], k: int) -> pd.DataFrame:
    """Each label's `k` most typical candidate patches over all shards, with their features,
    merged shard by shard (memory: k features per label, whatever the number of shards).
    Rows keep `order`, their position in the concatenation of the shards' tables, and come
    back in `_top_per_label` order over that concatenation."""
    best: pd.DataFrame | None = None
    offset = 0
    for name in candidates:
        part = store.read_parquet(name, ["label", "typicality", "feature"])
        start = offset
        part.insert(0, "order", np.arange(offset, offset + len(part), dtype=np.int64))
        offset += len(part)
        part = part[part["feature"].map(len) > 0]  # a shard's own losers cannot reach the top
        merged = part if best is None else pd.concat([best, part], ignore_index=True)
        best = merged.loc[_top_per_label(merged.sort_values("order", kind="stable"), k)].reset_index(drop=True)
        # features read from Parquet are views of the part's whole buffer: copy the ones kept
        # from this part, so that the buffer is freed (else every part would stay in memory)
        fresh = (best["order"] >= start).to_numpy()
        best["feature"] = [np.array(f) if new else f for f, new in zip(best["feature"], fresh)]
    return best if best is not None else pd.DataFrame(columns=["order", "label", "typicality", "feature"])


@task(name="elements", task_run_name="elements")
def elements(out: str, candidates: list[str], config: RankConfig, storage_options: dict | None = None) -> dict:
    """Keep each label's `per_label` most typical patches (from the shards' `candidates`
    artifacts, merged shard by shard: features of the others are never held), cluster them into
    elements, rank the elements; write `patches.parquet` (every candidate, `element` -1 when not
    clustered) and `elements.parquet`."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        best = _best_candidates(store, candidates, config.per_label)
        features = np.stack(best["feature"].to_numpy()) if len(best) else np.zeros((0, 1), np.float32)
        specificity = (
            label_specificity(features, best["label"].to_numpy(), config.specificity_neighbours)
            if best["label"].nunique() > 1
            else np.full(len(best), np.nan)  # one label: nothing to be shared with
        )
        element = pd.Series(dtype=np.int64)
        distance = pd.Series(dtype=np.float64)
        rows = []
        for label, top in best.groupby("label", sort=True):
            found = mine_elements(
                features[top.index.to_numpy()],
                top["typicality"].to_numpy(),
                config.elements,
                seed=config.seed,
                specificity=specificity[top.index.to_numpy()],
                chance=len(top) / len(best),
                shared_last=config.shared_elements == "last",
                method=config.clustering,
            )
            element = pd.concat([element, pd.Series(found.assignment, index=top["order"].to_numpy())])
            distance = pd.concat([distance, pd.Series(found.distance, index=top["order"].to_numpy())])
            for e in range(len(found.score)):
                rows.append(
                    {
                        "label": label,
                        "element": e,
                        "rank": e,
                        "score": float(found.score[e]),
                        "size": int(found.size[e]),
                        "score_lo": float(found.score_lo[e]),
                        "score_hi": float(found.score_hi[e]),
                        "specificity": float(found.specificity[e]),
                        "shared": bool(found.shared[e]),
                    }
                )
            log.info(
                "label %r: %d patches kept, %d elements, %d of them shared with other labels (top score %.4g, %d patches)",
                label,
                len(top),
                len(found.score),
                int(found.shared.sum()),
                found.score[0],
                found.size[0],
            )
        columns = [c for c in PATCH_COLUMNS if c != "element"]
        cand = pd.concat([store.read_parquet(c, columns) for c in candidates], ignore_index=True)
        cand["element"] = element.reindex(cand.index).fillna(-1).astype(np.int64).to_numpy()
        cand["distance"] = distance.reindex(cand.index).to_numpy(np.float64)
        patches = cand[PATCH_COLUMNS + ["distance"]].sort_values(["label", "image_id", "rank"], kind="stable")
        store.write_parquet(PATCHES, patches.reset_index(drop=True))
        store.write_parquet(ELEMENTS, _with_draws(pd.DataFrame(rows), patches))
    return {
        "labels": int(cand["label"].nunique()),
        "patches": len(cand),
        "elements": len(rows),
        "seconds": clock["seconds"],
    }
