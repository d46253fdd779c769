"""Caching and incremental reprocessing: reruns do no model work, new images are scored alone,
removed images disappear, a changed setting reruns its stage and the later ones only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.config import load_settings
from gcmine.flows.pipeline import run_pipeline
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

TINY = tiny_settings("train.retrain_fraction=0.5")


def _write(folder: Path, items) -> None:
    for i, item in enumerate(items):
        path = folder / item.label / f"{item.label}-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)


@pytest.fixture(scope="module")
def first(prefect_harness, tmp_path_factory) -> dict:
    """One complete run on 8 images (2 shards), kept as the baseline of every test here."""
    root = tmp_path_factory.mktemp("incr")
    images = root / "images"
    _write(images, motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=5))
    out = root / "out"
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    return {"root": root, "images": images, "out": out, "result": result}


def _clone(first: dict, tmp_path: Path) -> tuple[Path, Path]:
    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(first["images"], images)
    shutil.copytree(first["out"], out)
    return images, out


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(out / f"{name}.parquet")
        for name in ("typicality", "patches", "elements", "clusters", "embeddings")
    }


def test_first_run_reuses_nothing(first) -> None:
    assert first["result"]["reused"] == []


def test_rerun_does_no_model_work(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    before = _tables(out)
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    reused = set(result["reused"])
    assert {"embed", "cluster", "finetune"} <= reused
    assert {f"score[part-0000{i}.parquet]" for i in range(2)} <= reused
    assert {f"rank[part-0000{i}.parquet]" for i in range(2)} <= reused
    assert result["summary"]["new_images"] == 0
    after = _tables(out)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name], check_exact=True)


def test_added_images_are_scored_alone(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    old_manifest = pd.read_parquet(out / "manifest.parquet")
    extra = tmp_path / "extra"
    _write(extra, motif_dataset(n_per_label=1, size=16, labels=("circle", "cross"), seed=99))
    for p in extra.rglob("*.png"):
        target = images / p.parent.name / f"new-{p.name}"
        shutil.copy(p, target)
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    reused = set(result["reused"])
    # 2 new of 8 (25% <= retrain_fraction 50%): the model is kept, old shards are not rescored
    assert "finetune" in reused
    assert {"score[part-00000.parquet]", "score[part-00001.parquet]"} <= reused
    assert "score[part-00002.parquet]" not in reused
    assert result["summary"]["new_images"] == 2
    typ = pd.read_parquet(out / "typicality.parquet")
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(typ) == 10 and set(typ["image_id"]) == set(manifest.loc[manifest["status"] == "ok", "image_id"])
    # images seen before keep their first_seen time; the new ones are later
    kept = manifest.merge(old_manifest[["image_id", "first_seen"]], on="image_id", suffixes=("", "_old"))
    assert len(kept) == 8 and (kept["first_seen"] == kept["first_seen_old"]).all()
    new = manifest[~manifest["image_id"].isin(old_manifest["image_id"])]
    assert (new["first_seen"] > old_manifest["first_seen"].max()).all()


def test_removed_images_disappear_from_every_table(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    gone = sorted(images.rglob("*.png"))[:2]
    manifest = pd.read_parquet(out / "manifest.parquet")
    gone_ids = set(
        manifest.loc[manifest["source"].isin([str(first["images"] / p.relative_to(images)) for p in gone]), "image_id"]
    )
    assert len(gone_ids) == 2
    for p in gone:
        p.unlink()
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    assert "finetune" in result["reused"]
    for name, table in _tables(out).items():
        assert not set(table["image_id"] if "image_id" in table else []) & gone_ids, name
    assert not set(pd.read_parquet(out / "manifest.parquet")["image_id"]) & gone_ids


def test_a_changed_setting_reruns_its_stage_and_the_later_ones(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    result = run_pipeline(str(images), str(out), None, load_settings(None, [*TINY, "rank.per_image=1"]))
    reused = set(result["reused"])
    assert {"embed", "cluster", "finetune", "score[part-00000.parquet]", "score[part-00001.parquet]"} <= reused
    assert not any(r.startswith("rank[") for r in reused)
    assert (pd.read_parquet(out / "patches.parquet")["rank"] == 0).all()

    result = run_pipeline(str(images), str(out), None, load_settings(None, [*TINY, "cluster.k=3"]))
    reused = set(result["reused"])
    assert "embed" in reused and "cluster" not in reused and "finetune" in reused
    assert pd.read_parquet(out / "clusters.parquet")["cluster"].nunique() == 3


def test_deleted_outputs_are_recomputed_not_trusted(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    for p in (out / "maps").glob("part-00000-*.parquet"):
        p.unlink()
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    assert "score[part-00000.parquet]" not in result["reused"]
    assert "score[part-00001.parquet]" in result["reused"]
    assert list((out / "maps").glob("part-00000-*.parquet"))


def test_a_failing_stage_leaves_the_previous_artifacts(first, tmp_path, monkeypatch) -> None:
    images, out = _clone(first, tmp_path)
    names = ("patches.parquet", "elements.parquet", "typicality.parquet", "report/index.html", "run.json")
    before = {n: (out / n).read_bytes() for n in names}

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault in element mining")

    monkeypatch.setattr("gcmine.tasks.rank.mine_elements", broken)
    with pytest.raises(RuntimeError, match="injected fault"):
        run_pipeline(str(images), str(out), None, load_settings(None, [*TINY, "rank.elements=3"]))
    for n in names:
        assert (out / n).read_bytes() == before[n], n
    assert not list(out.rglob("*.tmp-*"))


def test_other_encoder_and_clusterer_rerun_only_the_collection_stages(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    settings = load_settings(None, [*TINY, "embed.method=vae", "embed.epochs=2", "embed.dim=3", "cluster.method=gmm"])
    result = run_pipeline(str(images), str(out), None, settings)
    reused = set(result["reused"])
    assert "embed" not in reused and "cluster" not in reused
    assert {"finetune", "score[part-00000.parquet]", "rank[part-00001.parquet]"} <= reused
    assert len(pd.read_parquet(out / "embeddings.parquet")["embedding"].iloc[0]) == 3
    metrics = pd.read_parquet(out / "cluster_metrics.parquet").set_index("metric")["value"]
    assert metrics["k"] == 2 and "log_likelihood_final" in metrics.index
