"""translate: the top images of each label's best element, translated to every other label."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image
from prefect import task

from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES, TRANSLATION_CHANGES, TRANSLATIONS, read_images, stopwatch
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import model_stage
from gcmine.tasks.latents import shape_groups
from gcmodels.config import RuntimeConfig, ScoreConfig, TranslateConfig
from gcmodels.mining.translation import Translator, change_maps, consistent_changes, to_uint8
from gcmodels.mining.typicality import TypicalityEstimator

__all__ = ["CHANGE_COLUMNS", "TRANSLATION_COLUMNS", "source_images", "translate"]

TRANSLATION_COLUMNS = [
    "pair",
    "image_id",
    "label",
    "target",
    "strength",
    "guidance",
    "seed",
    "typicality_source",
    "typicality",
    "change",
    "file",
    "source_file",
]
CHANGE_COLUMNS = [
    "pair",
    "image_id",
    "label",
    "target",
    "rank",
    "x0",
    "y0",
    "x1",
    "y1",
    "change",
    "change_cluster",
    "distance",
]


def source_images(patches: pd.DataFrame, elements: pd.DataFrame, per_label: int) -> pd.DataFrame:
    """Per label, the `per_label` images whose patches rank highest in the label's rank-0
    element (by patch typicality), topped up with the label's other most typical patches'
    images: columns `image_id`, `label`, in label order."""
    best = elements[elements["rank"] == 0].set_index("label")["element"]
    rows = []
    for label, group in patches.groupby("label", sort=True):
        in_best = group["element"].to_numpy() == best.get(label, -2)
        order = group.assign(_best=in_best).sort_values(
            ["_best", "typicality"], ascending=[False, False], kind="stable"
        )
        for image_id in order["image_id"].drop_duplicates().head(per_label):
            rows.append({"image_id": image_id, "label": label})
    return pd.DataFrame(rows, columns=["image_id", "label"])


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@task(name="translate", task_run_name="translate")
def translate(
    out: str,
    shards: list[str],
    fingerprint: str,
    patch_size: int,
    config: TranslateConfig,
    score: ScoreConfig,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
) -> dict:
    """Translate the source images (`source_images`) to every other label of the model by
    partial noising to `config.strength` and DDIM denoising under the target label (seeded: the
    same noise for every image); score each translation's typicality under its target; cluster
    the most changed patch of every translation into consistent changes. Writes
    `translations.parquet` (one row per source image and target, PNGs of the working-resolution
    source and translation under `translations/`) and `translation_changes.parquet` (patches in
    working pixels, with `change_cluster`).

    Every family translates: a checkpoint model translates the VAE latents of the working images
    (each at its own size, in groups of one shape; no clipping) and the translations are decoded
    by the VAE; changes are measured between the decoded source and the decoded translation (the
    VAE's reconstruction error is not a change)."""
    log = stage_logger()
    with stopwatch() as clock, model_stage(out, fingerprint, runtime, storage_options) as (store, model, device):
        sources = source_images(store.read_parquet(PATCHES), store.read_parquet(ELEMENTS), config.images_per_label)
        vocab = list(model.labels)
        if len(vocab) < 2 or sources.empty:
            raise ValueError(f"translate: needs a model of at least two labels and mined elements (labels {vocab})")
        latent = model.latent_space  # translate latents (a VAE's or the autoencoder's), decode the translations
        meta, pixels = read_images(store, shards, only=set(sources["image_id"]), ragged=True)  # each at its own size
        where = meta.drop_duplicates("image_id").reset_index().set_index("image_id")["index"]
        pairs = [(i, r.image_id, r.label, t) for i, r in enumerate(sources.itertuples()) for t in vocab if t != r.label]
        src_px = [pixels[j] for j in where.reindex([p[1] for p in pairs]).to_numpy()]  # (H_k, W_k, 3) uint8 each
        target = model.label_index([p[3] for p in pairs]).to(device)
        translator = Translator(
            strength=config.strength,
            steps=config.steps,
            guidance=config.guidance,
            batch_size=score.batch_size,
            seed=config.seed,
            clip=None if latent else 1.0,
        )
        estimator = TypicalityEstimator(
            draws=score.draws, t_min=score.t_min, t_max=score.t_max, batch_size=score.batch_size, seed=score.seed
        )
        n = len(pairs)
        t_src, t_moved, change = np.zeros(n), np.zeros(n), np.zeros(n)
        moved_px: list[np.ndarray | None] = [None] * n
        groups, before, after = [], [], []  # pairs grouped by working size; their images in [-1, 1] pixel space
        for idx in shape_groups(src_px).values():
            sel = torch.as_tensor(idx)
            x_src = torch.from_numpy(np.stack([src_px[k] for k in idx]).transpose(0, 3, 1, 2).copy())
            x0 = model.encode(x_src)
            moved = translator.translate(model, x0, target[sel.to(device)])
            t_src[idx] = estimator.maps(model, x0, target[sel.to(device)]).mean((1, 2)).cpu().numpy()
            t_moved[idx] = estimator.maps(model, moved, target[sel.to(device)]).mean((1, 2)).cpu().numpy()
            if latent:  # both through the VAE decoder, so its reconstruction error is not counted as change
                a, b = (model.decode(z).float().div_(127.5).sub_(1.0) for z in (x0, moved))
                out_px = ((b + 1.0) * 127.5).round_().to(torch.uint8)
            else:
                a, b, out_px = x0, moved, to_uint8(moved)
            change[idx] = change_maps(a, b).mean((1, 2)).cpu().numpy()
            for k, im in zip(idx, out_px.permute(0, 2, 3, 1).cpu().numpy()):
                moved_px[k] = np.ascontiguousarray(im)
            groups.append(idx)
            before.append(a)
            after.append(b)
        found = consistent_changes(
            before,
            after,
            patch_size=patch_size,
            per_image=1,
            clusters=config.clusters,
            feature_size=min(4, patch_size),
            seed=config.seed,
        )
        order = np.asarray([k for idx in groups for k in idx])
        rows = []
        written: set[str] = set()
        for k, (i, image_id, label, tgt) in enumerate(pairs):
            source_file = f"translations/source-{i:04d}.png"
            if source_file not in written:
                store.write_bytes(source_file, _png(np.ascontiguousarray(src_px[k])))
                written.add(source_file)
            file = f"translations/{k:05d}.png"
            store.write_bytes(file, _png(moved_px[k]))
            rows.append(
                {
                    "pair": k,
                    "image_id": image_id,
                    "label": label,
                    "target": tgt,
                    "strength": config.strength,
                    "guidance": config.guidance,
                    "seed": config.seed,
                    "typicality_source": float(t_src[k]),
                    "typicality": float(t_moved[k]),
                    "change": float(change[k]),
                    "file": file,
                    "source_file": source_file,
                }
            )
        table = pd.DataFrame(rows, columns=TRANSLATION_COLUMNS)
        store.write_parquet(TRANSLATIONS, table)
        ch = found.patches.assign(image=order[found.patches["image"].to_numpy()]).rename(columns={"image": "pair"})
        ch = ch.merge(table[["pair", "image_id", "label", "target"]], on="pair", how="left")
        store.write_parquet(TRANSLATION_CHANGES, ch[CHANGE_COLUMNS])
    gain = float(np.mean(t_moved - t_src))
    log.info(
        "translated %d images to %d other labels (%d translations) at strength %g: typicality under the target "
        "%+.4g on average",
        len(sources),
        len(vocab) - 1,
        len(pairs),
        config.strength,
        gain,
    )
    return {
        "sources": len(sources),
        "translations": len(pairs),
        "clusters": int(len(found.clusters)),
        "typicality_gain": gain,
        "seconds": clock["seconds"],
    }
