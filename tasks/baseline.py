"""baseline: Doersch et al. 2012 discriminative patch mining on the run's working images."""

from __future__ import annotations

import numpy as np
from prefect import task

from gcmine.tasks.infra.artifacts import BASELINE, BASELINE_DETECTORS, MANIFEST, live_rows, read_images, stopwatch
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore
from gcmodels.baselines.doersch import DiscriminativeMiner
from gcmodels.config import BaselineConfig
from gcmodels.mining.patches import scale_boxes

__all__ = ["BASELINE_COLUMNS", "baseline", "baseline_miner"]

BASELINE_COLUMNS = ["label", "detector", "rank", "image_id", "image_label", "x0", "y0", "x1", "y1", "score"]


def baseline_miner(config: BaselineConfig, patch_size: int) -> DiscriminativeMiner:
    """The miner of `config`; its patch side defaults to the typicality patch size (in cells)."""
    cells = config.patch_cells or max(2, round(patch_size / config.cell_size))
    return DiscriminativeMiner(
        cell_size=config.cell_size,
        patch_cells=cells,
        detectors=config.detectors,
        keep=config.keep,
        rounds=config.rounds,
        seed=config.seed,
    )


@task(name="baseline", task_run_name="baseline")
def baseline(
    out: str,
    shards: list[str],
    patch_size: int,
    config: BaselineConfig,
    storage_options: dict | None = None,
    conditioning: str | None = None,
) -> dict:
    """Mine discriminative HOG patches of every label (label vs rest) on the labelled working
    images (labels from the conditioning table `conditioning` when given, else the manifest); write `baseline.parquet` (the detections of each label's best `keep` detectors, one
    row per detector and image, boxes in original pixels) and `baseline_detectors.parquet`
    (`label`, `detector`, `purity`, `top_score`)."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        meta, pixels = read_images(store, shards, conditioning)
        keep = meta["label"].map(lambda v: isinstance(v, str)).to_numpy()
        meta, pixels = meta[keep].reset_index(drop=True), pixels[keep]
        miner = baseline_miner(config, patch_size)
        if miner.patch_size > pixels.shape[1]:
            raise ValueError(
                f"baseline: the patch ({miner.patch_size} px = baseline.cell_size x patch_cells) is larger than the "
                f"working images ({pixels.shape[1]} px)"
            )
        try:
            found = miner.mine(pixels, meta["label"].tolist())
        except ValueError as err:
            raise ValueError(f"baseline: {err}") from None
        det = found.detections
        sizes = live_rows(store.read_parquet(MANIFEST, ["image_id", "width", "height", "status"]))
        ids = meta["image_id"].to_numpy(object)[det["image"].to_numpy()]
        wh = sizes.reindex(ids)
        res = pixels.shape[1]
        boxes = scale_boxes(
            det[["x0", "y0", "x1", "y1"]].to_numpy(),
            (res, res),
            (wh["width"].to_numpy(np.int64), wh["height"].to_numpy(np.int64)),
        )
        table = det.assign(image_id=ids, x0=boxes[:, 0], y0=boxes[:, 1], x1=boxes[:, 2], y1=boxes[:, 3])
        store.write_parquet(BASELINE, table[BASELINE_COLUMNS].reset_index(drop=True))
        store.write_parquet(BASELINE_DETECTORS, found.detectors)
    log.info(
        "baseline: %d detectors on %d images in %.1f s (patch %d px)",
        len(found.detectors),
        len(meta),
        found.seconds["total"],
        miner.patch_size,
    )
    return {
        "images": len(meta),
        "detectors": len(found.detectors),
        "patch_size": miner.patch_size,
        "phases": {k: round(float(v), 3) for k, v in found.seconds.items()},
        "seconds": clock["seconds"],
    }
