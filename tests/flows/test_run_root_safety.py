"""A run root is never broken for good nor silently wrong (issue 22): shards without a labelled
image flow through every stage; damaged cached artifacts, model weights and input shards are
detected, named and recomputed (never published); leftovers of interrupted writes are swept."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.config import load_settings
from flows.pipeline import run_pipeline
from gcmodels.synthetic import motif_dataset

pytestmark = pytest.mark.slow

TINY = [
    "data.resolution=16", "data.shard_size=4", "embed.size=8", "embed.dim=4", "cluster.k=2",
    "model.block_out_channels=[8, 16]", "train.steps=3", "train.batch_size=4", "train.warmup_steps=1",
    "train.retrain_fraction=0.5", "score.draws=2", "score.batch_size=8", "rank.per_image=2", "rank.elements=2",
    "rank.feature_draws=1", "report.heatmaps_per_label=1", "runtime.progress=false", "runtime.device=cpu",
]


def _write(folder: Path, items, prefix: str = "") -> None:
    for i, item in enumerate(items):
        path = folder / item.label / f"{prefix}{item.label}-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)


@pytest.fixture(scope="module")
def first(prefect_harness, tmp_path_factory) -> dict:
    """One complete run on 8 labelled images (2 shards)."""
    root = tmp_path_factory.mktemp("safety")
    images = root / "images"
    _write(images, motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=5))
    out = root / "out"
    run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    return {"images": images, "out": out}


def _clone(first: dict, tmp_path: Path) -> tuple[Path, Path]:
    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(first["images"], images)
    shutil.copytree(first["out"], out)
    return images, out


# ------------------------------------------------------------------ 1. empty groups
def test_unlabelled_images_added_to_a_run_flow_through_every_stage(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    extra = motif_dataset(n_per_label=1, size=16, labels=("circle", "cross"), seed=77)
    for i, item in enumerate(extra):  # at the top of the folder: no folder label
        item.image.save(images / f"unlabelled-{i}.png")
    settings = [*TINY, "score.cotypicality=true", "baseline.enabled=true", "translate.enabled=true", "translate.steps=2",
                "translate.images_per_label=1"]
    result = run_pipeline(str(images), str(out), None, load_settings(None, settings))
    assert result["summary"]["new_images"] == 2 and result["summary"]["unlabeled"] == 2
    manifest = pd.read_parquet(out / "manifest.parquet")
    new = manifest[manifest["filename"].str.startswith("unlabelled-")]
    assert set(new["shard"]) == {"part-00002.parquet"} and new["label"].isna().all()
    typ = pd.read_parquet(out / "typicality.parquet")
    assert not set(typ["image_id"]) & set(new["image_id"])  # unlabelled images are not scored...
    assert set(pd.read_parquet(out / "embeddings.parquet")["image_id"]) >= set(new["image_id"])  # ...but summarised
    assert len(pd.read_parquet(out / "patches.parquet")) > 0
    # and the next run (nothing new) reuses everything, the empty shard included
    again = run_pipeline(str(images), str(out), None, load_settings(None, settings))
    assert {"score[part-00002.parquet]", "rank[part-00002.parquet]"} <= set(again["reused"])
