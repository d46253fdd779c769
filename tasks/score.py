"""score: typicality maps of each image under its own label (and, with cotypicality, its
image-level typicality under every label), one task run per shard."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from prefect import task

from gcmine.tasks.infra.artifacts import (
    MAPS_PARQUET,
    TYPICALITY,
    TYPICALITY_COLUMNS,
    artifact_key,
    keyed_part,
    maps_frame,
    per_label_rows,
    read_images,
    stopwatch,
    worker_name,
)
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import out_of_memory_hint
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import load_base_model, model_stage, scoring_model
from gcmine.tasks.infra.progress import StageProgress
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.latents import read_latent_inputs, shape_groups
from gcmodels.config import ModelConfig, RuntimeConfig, ScoreConfig
from gcmodels.mining.adaptive import AdaptiveRule, adaptive_maps, standard_error
from gcmodels.mining.cotypicality import cotypicality_frame
from gcmodels.mining.typicality import TypicalityEstimator, label_contrast
from gcmodels.runtime import resolve_precision

CHUNK = 64  # images handed to the estimator at a time (bounds memory, paces the progress bar)


def score_rows(
    ids: list[str],
    labels: list[str],
    typicality: np.ndarray,
    vocab: list[str],
    cotypicality: np.ndarray | None,
    precision: dict[str, np.ndarray] | None = None,
    image_labels: list[str] | None = None,
) -> pd.DataFrame:
    """Image-level rows of `typicality.parquet`: `image_id`, `label` (the conditioning label),
    `image_label` (the image's own label, or labels ``"a|b"``: `image_labels`, default `labels`),
    `typicality`, and its precision `draws`, `typicality_se`, `top_patch_se` (arrays of
    `precision`, (B,) or with cotypicality (B, L); NaN / 0 draws where not given). One row per
    scored (image, label) (an image of several labels is scored under each: B rows, `typicality`
    (B,) the means of the maps) or, with `cotypicality` (B, L) in `vocab` order, one row per
    (image, label) of the vocabulary (an image's first row kept when it was scored twice)."""
    own = labels if image_labels is None else image_labels
    if cotypicality is None:
        frame = pd.DataFrame({"image_id": ids, "label": labels, "image_label": own, "typicality": typicality})
    else:
        frame = cotypicality_frame(ids, vocab, cotypicality)
        frame.insert(2, "image_label", np.repeat(np.asarray(own, dtype=object), len(vocab)))
    precision = precision or {}
    frame["draws"] = np.asarray(precision.get("draws", np.zeros(len(frame))), np.int64).reshape(-1)
    for column in ("typicality_se", "top_patch_se"):
        frame[column] = np.asarray(precision.get(column, np.full(len(frame), np.nan)), np.float64).reshape(-1)
    if cotypicality is not None and len(set(ids)) < len(ids):
        frame = frame.drop_duplicates(["image_id", "label"]).reset_index(drop=True)
    return frame


def _adaptive_rule(config: ScoreConfig, ranking: dict | None, model) -> AdaptiveRule:
    """The elimination rule of `config` for the ranking rank will make (`ranking`: its `top_k`
    patches per label, `per_image`, `patch_size` in working pixels, turned into map cells)."""
    if ranking is None:
        raise ValueError("score.adaptive needs the ranking it serves (top_k, per_image, patch_size): pass ranking=")
    patch = max(1, round(ranking["patch_size"] / model.latent_factor))
    return AdaptiveRule(
        first=config.adaptive_first,
        z=config.adaptive_z,
        top_k=ranking["top_k"],
        per_image=ranking["per_image"],
        patch=patch,
        kind=config.adaptive_rule,
        decide=min(config.adaptive_decide, ranking["per_image"]),
        variance=config.adaptive_variance,
    )


def _shard_inputs(
    store: RunStore, model, name: str, conditioning: str | None, latents: str | None
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, Callable[[slice], torch.Tensor]]]]:
    """The shard's live labelled images, one row per (image, label) to score (image_id, label,
    image_label: an image of several labels ``"a|b"`` is scored under each), and their
    model-space inputs, in groups of one shape: (row indices, x0 of a slice of them). Pixel model:
    the working images, batched by size (data.resize=short_side keeps the aspect ratio), encoded
    per chunk; model.base: the cached VAE latents `latents`, batched by aspect ratio."""
    if latents is None:
        meta, pixels = read_images(store, [name], conditioning, ragged=True)
        keep = meta["label"].map(lambda v: isinstance(v, str)).to_numpy()
        meta, pixels = meta[keep].reset_index(drop=True), [p for p, k in zip(pixels, keep) if k]
        meta, where = per_label_rows(meta)
        pixels = [pixels[i] for i in where]
        groups = []
        for idx in shape_groups(pixels).values():
            images = torch.from_numpy(np.ascontiguousarray(np.stack([pixels[i] for i in idx]).transpose(0, 3, 1, 2)))
            groups.append((np.asarray(idx), lambda sl, x=images: model.encode(x[sl])))
        return meta, groups
    meta, arrays = read_latent_inputs(store, [latents], conditioning, labelled_only=True)
    meta, where = per_label_rows(meta)
    arrays = [arrays[i] for i in where]
    groups = []
    for idx in shape_groups(arrays).values():
        stacked = torch.from_numpy(np.stack([arrays[i] for i in idx]))
        groups.append((np.asarray(idx), lambda sl, z=stacked: z[sl].to(model.device)))
    return meta, groups


@task(name="score", task_run_name="score[{shard[name]}]")
def score_shard(
    out: str,
    shard: dict,
    fingerprint: str,
    config: ScoreConfig,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
    conditioning: str | None = None,
    latents: str | None = None,
    ranking: dict | None = None,
    base: ModelConfig | None = None,
) -> dict:
    """Typicality maps of the shard's live labelled images under their labels (from the
    conditioning table `conditioning` when given, else the manifest), with the model of
    `fingerprint`: `maps/part-*-<key>.parquet` and image-level scores `scores/part-*-<key>.parquet`
    (content-addressed by shard, labels, model and settings). With a Stable Diffusion model the
    inputs are the shard's cached VAE latents (`latents`) and the maps are at latent resolution
    (one value per latent cell; rank upsamples them to the working image).

    With `config.adaptive`, draws go by successive elimination (`gcmodels.mining.adaptive`) against the
    ranking rank will make, `ranking` = {top_k: rank.per_label, per_image: rank.per_image,
    patch_size: working pixels}: with `score.adaptive_rule` "elimination", images that cannot
    enter their label's top patches in this shard stop early; with "decision", images whose top-K
    membership and own best `score.adaptive_decide` patches are decided; the others get the N
    draws (and the map) of plain scoring.

    `base` (score.compare_base: the model settings): score with the checkpoint `base.base` before
    fine-tuning instead, conditioned on the fine-tuned model's labels, with the same draws;
    written apart, `maps_base/` and `scores_base/`."""
    name = shard["name"]
    with (
        stopwatch() as clock,
        model_stage(out, fingerprint, runtime, storage_options, hold_gpu=False) as (
            store,
            model,
            device,
        ),
    ):
        if base is not None:
            from gcmine.tasks.finetune import checkpoint_of

            _, class_map = checkpoint_of(base, storage_options)
            precision_of = resolve_precision(runtime.precision, device)
            model = load_base_model(base, list(model.labels), class_map, device, precision_of)
        meta, groups = _shard_inputs(store, model, name, conditioning, latents)
        with gpu_slot(device, runtime):  # the card is held for the compute only, not the reading or writing
            model = scoring_model(model, runtime)
            estimator = TypicalityEstimator(
                draws=config.draws,
                t_min=config.t_min,
                t_max=config.t_max,
                batch_size=config.batch_size,
                seed=config.seed,
            )
            cond = model.label_index(list(meta["label"]))
            vocab = list(model.labels)
            every = model.label_index(vocab)  # (L,) the conditioning labels of cotypicality
            maps: list[np.ndarray | None] = [None] * len(meta)  # (h, w) float32 per image
            co = np.zeros((len(meta), len(vocab)), np.float64)  # image-level T(x | label) per label
            key = artifact_key(out, "score-" + name.removesuffix(".parquet"))
            done = 0
            contrast = config.contrast_mode(len(vocab))  # None: typicality maps; 'all' / 'cycled': label contrast
            cycled = contrast == "cycled"
            every_label = config.cotypicality or contrast == "all"  # the maps under every label are scored
            draws = np.full((len(meta), len(vocab)) if config.cotypicality else len(meta), config.draws, np.int64)
            per_draw = torch.zeros(
                (len(meta), len(vocab) if config.cotypicality else 1, config.draws), dtype=torch.float64
            )
            precision: dict[str, np.ndarray] = {"draws": draws}
            if config.adaptive:
                rule = _adaptive_rule(config, ranking, model)
                total = len(meta) * config.draws  # the progress of adaptive scoring counts draws (fewer are spent)
                with (
                    StageProgress(total, f"score {name} (draws)", bar=runtime.progress, key=key) as progress,
                    out_of_memory_hint(f"score {name}", {"score.batch_size": config.batch_size}, device),
                ):
                    found = adaptive_maps(
                        estimator,
                        model,
                        [(rows, lambda pos, f=inputs: f(torch.from_numpy(pos))) for rows, inputs in groups],
                        cond,
                        rule,
                        chunk=CHUNK,
                        progress=progress.update,
                    )
                    progress.update(total)
                    progress.close()
                maps = list(found.maps)
                precision = {
                    "draws": found.draws,
                    "typicality_se": found.typicality_se,
                    "top_patch_se": found.top_patch_se,
                }
            else:
                with StageProgress(len(meta), f"score {name}", bar=runtime.progress, key=key) as progress:
                    with out_of_memory_hint(f"score {name}", {"score.batch_size": config.batch_size}, device):
                        for rows, inputs in groups:
                            for start in range(0, len(rows), CHUNK):
                                sl = slice(start, min(start + CHUNK, len(rows)))
                                idx = rows[sl]
                                x0 = inputs(sl)
                                tick = lambda k, base=done: progress.update(base + k)  # noqa: E731
                                c = cond[idx].to(device)
                                record = torch.zeros(
                                    (len(idx), len(vocab) if every_label else 1, config.draws), dtype=torch.float64
                                )
                                if every_label:
                                    m = estimator.cotypicality_maps(
                                        model, x0, every.to(device), progress=tick, draw_means=record
                                    )  # (b, L, h, w)
                                    co[idx] = m.mean((2, 3)).double().cpu().numpy()
                                    if contrast:  # what rank reads: the own label's contrast
                                        m = label_contrast(m, c - 1)
                                    else:  # each image's map under its own label (what rank reads)
                                        own = (c - 1).view(-1, 1, 1, 1).expand(-1, 1, *m.shape[2:])
                                        m = m.gather(1, own)[:, 0]
                                    if not config.cotypicality:  # the precision of the contrast itself
                                        record = label_contrast(record, (c - 1).cpu())[:, None]
                                elif cycled:  # one rival label per draw in place of the null one
                                    m = estimator.contrast_maps(
                                        model, x0, c, len(vocab), progress=tick, draw_means=record[:, 0]
                                    )
                                else:
                                    m = estimator.maps(model, x0, c, progress=tick, draw_means=record[:, 0])
                                per_draw[torch.from_numpy(np.asarray(idx))] = record
                                for i, mi in zip(idx, m.cpu().numpy()):
                                    maps[i] = mi
                                done += len(idx)
                    progress.close()
        ids, labels = list(meta["image_id"]), list(meta["label"])
        okey = content_key(
            shard,
            fingerprint,
            config,
            conditioning,
            latents,
            *([ranking] if config.adaptive else []),
            *([{"base": str(base.base)}] if base is not None else []),
        )
        suffix = "_base" if base is not None else ""
        outputs = {
            "maps": keyed_part("maps" + suffix, name, okey),
            "scores": keyed_part("scores" + suffix, name, okey),
        }
        own = {  # the precision of each image's own-label map (with cotypicality: column of its label)
            "draws": precision["draws"][np.arange(len(ids)), (cond - 1).cpu().numpy()]
            if config.cotypicality
            else precision["draws"],
            **({"top_patch_se": precision["top_patch_se"]} if "top_patch_se" in precision else {}),
        }
        store.write_parquet(outputs["maps"], maps_frame(ids, labels, maps, own), **MAPS_PARQUET)  # type: ignore[arg-type]
        means = np.array([float(m.mean()) for m in maps]) if maps else np.zeros(0)  # type: ignore[union-attr]
        if not config.adaptive:
            se = standard_error(per_draw.numpy())  # (B, 1 or L)
            precision["typicality_se"] = se if config.cotypicality else se[:, 0]
        store.write_parquet(
            outputs["scores"],
            score_rows(
                ids, labels, means, vocab, co if config.cotypicality else None, precision, list(meta["image_label"])
            ),
        )
    seconds = clock["seconds"]
    spent = int(np.sum(precision["draws"])) if not config.cotypicality else len(ids) * config.draws
    stage_logger().info(
        "scored %d images%s with N=%d draws in %.1f s (%.2f maps/s, %d draws spent%s)%s",
        len(set(ids)),
        f" ({len(ids)} maps: one per label of an image)" if len(set(ids)) < len(ids) else "",
        config.draws,
        seconds,
        len(ids) / max(seconds, 1e-9),
        spent,
        " adaptively" if config.adaptive else "",
        (
            f"; maps: label contrast ({'one rival label per draw' if cycled else f'each draw under all {len(vocab)} labels'})"
            if contrast
            else ""
        ),
    )
    return {
        "shard": name,
        "images": len(ids),
        **outputs,
        "seconds": seconds,
        "worker": worker_name(),
        "draws_spent": spent,
        "maps_kind": f"label contrast ({contrast})" if contrast else "typicality",
    }


@task(name="typicality-table", task_run_name="typicality-table")
def typicality_table(out: str, scores: list[str], storage_options: dict | None = None) -> dict:
    """Gather the shards' image-level scores (`scores`: their artifact names) into `typicality.parquet`."""
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        table = pd.concat([store.read_parquet(name) for name in scores], ignore_index=True)
        store.write_parquet(TYPICALITY, table[TYPICALITY_COLUMNS])
    return {"images": len(table), "seconds": clock["seconds"]}
