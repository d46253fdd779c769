"""The small pixel model on images of every shape (data.resize=short_side, issue 21): working
images keep their aspect ratio, fine-tuning and scoring batch images of one shape together,
patch boxes are mapped back to original pixels per axis; squares give exactly what
data.resize=square gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import read_images, unpack_map_rows
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.images import working_size
from gcmodels.data.synthetic import mixed_motif_dataset, motif_dataset

pytestmark = pytest.mark.slow

TINY = tiny_settings("data.shard_size=6", "train.steps=4", "runtime.threads=1")
PATCH = 3  # rank.patch_size: round(0.2 x 16)


def _run(images: Path, out: Path, *extra: str) -> RunStore:
    argv = ["run", str(images), "--out", str(out)]
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    assert main(argv) == 0
    return RunStore(str(out))


@pytest.fixture(scope="module")
def mixed(prefect_harness, tmp_path_factory) -> dict:
    """8 images per label of every shape (plus one square each), in a folder per label, run with
    data.resize=short_side and whole images batched by shape (train.square_crops=false)."""
    root = tmp_path_factory.mktemp("mixed")
    images = root / "images"
    items = mixed_motif_dataset(n_per_label=8, base=40, labels=("circle", "cross"), seed=5)
    items += motif_dataset(n_per_label=1, size=40, labels=("circle", "cross"), seed=6)
    for i, item in enumerate(items):
        (images / item.label).mkdir(parents=True, exist_ok=True)
        item.image.save(images / item.label / f"{i:02d}.png")
    store = _run(images, root / "run", "data.resize=short_side", "train.square_crops=false")
    return {"out": root / "run", "store": store, "sizes": {(it.image.width, it.image.height) for it in items}}


def test_working_images_keep_the_aspect_ratio(mixed) -> None:
    store = mixed["store"]
    assert len(mixed["sizes"]) > 4  # really of several shapes
    manifest = store.read_parquet("manifest.parquet").set_index("image_id")
    shards = sorted(p.name for p in (mixed["out"] / "images").glob("part-*.parquet"))
    meta, pixels = read_images(store, shards, ragged=True)
    shapes = set()
    for iid, px in zip(meta["image_id"], pixels):
        w, h = manifest.loc[iid, ["width", "height"]]
        # short side 16, long side to the nearest multiple of 2 (two UNet levels: one halving)
        assert (px.shape[1], px.shape[0]) == working_size(int(w), int(h), 16, "short_side", 2)
        shapes.add(px.shape)
    assert len(shapes) > 2  # several shape buckets


def test_maps_at_each_working_size_and_patches_mapped_per_axis(mixed) -> None:
    store, out = mixed["store"], mixed["out"]
    manifest = store.read_parquet("manifest.parquet").set_index("image_id")
    maps = pd.concat([pd.read_parquet(p) for p in sorted((out / "maps").glob("part-*.parquet"))], ignore_index=True)
    assert len(maps) == 18
    for iid, m in zip(maps["image_id"], unpack_map_rows(maps)):
        w, h = manifest.loc[iid, ["width", "height"]]
        assert (m.shape[1], m.shape[0]) == working_size(int(w), int(h), 16, "short_side", 2) and np.isfinite(m).all()
    cands = pd.concat([pd.read_parquet(p) for p in sorted((out / "patch_candidates").glob("part-*.parquet"))])
    assert len(cands) == 36
    for _, p in cands.iterrows():
        w, h = (int(v) for v in manifest.loc[p["image_id"], ["width", "height"]])
        ww, wh = working_size(w, h, 16, "short_side", 2)
        assert 0 <= p["wx0"] < p["wx1"] <= ww and 0 <= p["wy0"] < p["wy1"] <= wh
        assert (p["wx1"] - p["wx0"], p["wy1"] - p["wy0"]) == (PATCH, PATCH)
        # each axis scaled by its own original / working ratio (floor the start, ceil the end)
        sx, sy = w / ww, h / wh
        assert p["x0"] == np.floor(p["wx0"] * sx + 1e-9) and p["x1"] == np.ceil(p["wx1"] * sx - 1e-9)
        assert p["y0"] == np.floor(p["wy0"] * sy + 1e-9) and p["y1"] == np.ceil(p["wy1"] * sy - 1e-9)
        assert 0 <= p["x0"] < p["x1"] <= w and 0 <= p["y0"] < p["y1"] <= h
    patches = store.read_parquet("patches.parquet")
    assert len(patches) == 36 and set(patches["rank"]) == {0, 1}
    assert set(store.read_parquet("elements.parquet")["label"]) == {"circle", "cross"}
    assert (out / "report" / "index.html").exists()


def test_finetune_batched_the_shapes_together(mixed) -> None:
    import json

    history = mixed["store"].read_parquet("training.parquet")
    assert history["step"].tolist() == [0, 1, 2, 3] and np.isfinite(history["loss"]).all()
    info = json.loads((mixed["out"] / "run.json").read_text())
    assert info["config"]["data"]["resize"] == "short_side"
    assert info["stages"]["finetune"]["training_inputs"] == 18 and info["stages"]["finetune"]["training_shapes"] > 2


def test_squares_give_what_resize_square_gives(prefect_harness, tmp_path) -> None:
    """A collection of squares: short_side and square give the same working images, maps and patches."""
    images = tmp_path / "images"
    for i, item in enumerate(motif_dataset(n_per_label=5, size=40, labels=("circle", "cross"), seed=7)):
        (images / item.label).mkdir(parents=True, exist_ok=True)
        item.image.save(images / item.label / f"{i:02d}.png")
    a = _run(images, tmp_path / "square", "data.resize=square")
    b = _run(images, tmp_path / "short", "data.resize=short_side")
    for name in ("patches.parquet", "elements.parquet", "typicality.parquet", "training.parquet"):
        x, y = a.read_parquet(name), b.read_parquet(name)
        cols = [c for c in x.columns if c != "seconds"]
        pd.testing.assert_frame_equal(x[cols], y[cols], obj=name)
    ma = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "square" / "maps").glob("*.parquet"))])
    mb = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "short" / "maps").glob("*.parquet"))])
    assert len(ma) == 10
    for x, y in zip(unpack_map_rows(ma.reset_index(drop=True)), unpack_map_rows(mb.reset_index(drop=True))):
        assert np.array_equal(x, y)


def test_a_change_of_resize_policy_retrains_on_oblong_images(mixed, tmp_path) -> None:
    """The model of a short_side run on oblong images is not reused by a square run in the same
    run root (its working images differ), and the images are decoded again."""
    import shutil

    from gcmine.flows.config import load_settings
    from gcmine.flows.pipeline import run_pipeline

    out = tmp_path / "run"
    shutil.copytree(mixed["out"], out)
    settings = load_settings(None, [*TINY, "data.resize=square"])
    result = run_pipeline(str(mixed["out"].parent / "images"), str(out), None, settings)
    assert "finetune" not in result["reused"]
    assert result["stages"]["ingest"]["reused_shards"] == 0  # every shard holds an oblong image
    maps = pd.concat([pd.read_parquet(out / m) for m in result["stages"]["score"]["maps"]])
    assert len(maps) == 18 and set(zip(maps["height"], maps["width"])) == {(16, 16)}


def test_square_crops_train_on_tiles_and_score_whole_images(mixed, tmp_path) -> None:
    """The defaults (data.resize=short_side, train.square_crops on) in the same run root: a new
    model (another training), trained on the square tiles of the aspect-kept working images (one
    shape, a log line says how many), and maps still at each image's own working size."""
    import shutil

    from gcmine.flows.config import load_settings
    from gcmine.flows.pipeline import run_pipeline
    from gcmodels.data.images import square_tiles

    out = tmp_path / "run"
    shutil.copytree(mixed["out"], out)
    settings = load_settings(None, TINY)
    assert (settings.data.resize, settings.train.square_crops) == ("short_side", True)
    result = run_pipeline(str(mixed["out"].parent / "images"), str(out), None, settings)
    assert "finetune" not in result["reused"]
    store = RunStore(str(out))
    shards = [s["name"] for s in result["stages"]["ingest"]["shards"]]
    _, pixels = read_images(store, shards, ragged=True)
    tiles = sum(len(square_tiles(p)) for p in pixels)
    trained = result["stages"]["finetune"]
    assert trained["training_inputs"] == tiles > len(pixels) and trained["training_shapes"] == 1
    maps = pd.concat([pd.read_parquet(out / m) for m in result["stages"]["score"]["maps"]])
    assert {(h, w) for h, w in zip(maps["height"], maps["width"])} == {p.shape[:2] for p in pixels}
    history = store.read_parquet("training.parquet")
    assert history["step"].tolist() == [0, 1, 2, 3] and np.isfinite(history["loss"]).all()


def test_latent_pixel_model_on_images_of_every_shape(mixed, tmp_path) -> None:
    """model.latent_factor=2 on the mixed shapes: a collection autoencoder trained first (on crops
    of the aspect-kept working images: 16 px, their smallest side), saved with the model; maps on
    its latent grid (half of each working side), patch boxes in working pixels of the rank patch
    size inside each working image; samples decoded to images."""
    import json

    from gcmodels.diffusion import PixelDiffusion

    store = _run(
        mixed["out"].parent / "images",
        tmp_path / "latent",
        "data.resize=short_side",
        "train.square_crops=false",
        "model.latent_factor=2",
        "model.latent_channels=3",
        "model.autoencoder_width=8",
        "train.autoencoder_steps=5",
        "report.samples=1",
        "report.sample_steps=2",
    )
    out = tmp_path / "latent"
    info = json.loads((out / "run.json").read_text())
    ae = info["stages"]["finetune"]["autoencoder"]
    assert ae["steps"] == 5 and ae["crop"] == 16 and not ae["reused"]  # crop: at most the smallest working side
    model = PixelDiffusion.load(out / "model")
    assert model.latent_factor == 2 and model.resolution == 16 and model.unet.config.in_channels == 3
    manifest = store.read_parquet("manifest.parquet").set_index("image_id")
    maps = pd.concat([pd.read_parquet(p) for p in sorted((out / "maps").glob("part-*.parquet"))], ignore_index=True)
    assert len(maps) == 18
    for iid, m in zip(maps["image_id"], unpack_map_rows(maps)):
        w, h = manifest.loc[iid, ["width", "height"]]
        ww, wh = working_size(int(w), int(h), 16, "short_side", 4)  # a multiple of latent 2 x UNet 2
        assert (m.shape[1], m.shape[0]) == (ww // 2, wh // 2) and np.isfinite(m).all()
    cands = pd.concat([pd.read_parquet(p) for p in sorted((out / "patch_candidates").glob("part-*.parquet"))])
    assert len(cands) == 36
    for _, p in cands.iterrows():
        w, h = (int(v) for v in manifest.loc[p["image_id"], ["width", "height"]])
        ww, wh = working_size(w, h, 16, "short_side", 4)
        assert 0 <= p["wx0"] < p["wx1"] <= ww and 0 <= p["wy0"] < p["wy1"] <= wh
        assert (p["wx1"] - p["wx0"], p["wy1"] - p["wy0"]) == (PATCH, PATCH)
    assert len(store.read_parquet("patches.parquet")) > 0
    page = (out / "report" / "index.html").read_text()
    assert "3-channel latents of an autoencoder learnt on the collection (2 times smaller" in page
    samples = info["stages"].get("samples") or {}
    assert samples.get("samples", 0) == 2, samples
