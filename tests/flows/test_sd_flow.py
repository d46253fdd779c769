"""The whole flow on a Stable Diffusion checkpoint (model.base): a tiny random SD directory built
by the test, images of three aspect ratios, on CPU: latents, 2 fine-tuning steps, scoring,
ranking, report; then the checks of the issue (coordinates, cached latents, loadable model)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import unpack_map_rows
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.images import working_size
from gcmodels.diffusion import load_any_model
from gcmodels.diffusion.sd import StableDiffusion

pytestmark = pytest.mark.slow

SIZES = [(40, 24), (24, 24), (24, 36)]  # wide, square, tall originals
SD = [
    "data.resolution=16",
    "data.shard_size=4",
    "embed.size=8",
    "embed.dim=4",
    "cluster.k=2",
    "train.steps=2",
    "train.batch_size=2",
    "train.checkpoint_every=1",
    "score.draws=2",
    "score.batch_size=8",
    "rank.per_image=2",
    "rank.elements=2",
    "rank.feature_draws=2",
    "rank.patch_size=6",
    "report.heatmaps_per_label=1",
    "runtime.progress=false",
    "runtime.threads=1",
    "model.prompt_template=A photo of a {label}.",
]


@pytest.fixture(scope="module")
def sd_run(prefect_harness, tiny_sd_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sd-data")
    images = root / "images"
    rng = np.random.default_rng(0)
    for label in ("red_car", "blue car"):
        (images / label).mkdir(parents=True)
        for i in range(5):
            w, h = SIZES[i % 3]
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arr[..., 0 if label == "red_car" else 2] |= 0xC0
            Image.fromarray(arr).save(images / label / f"{i}.png")
    out = root / "out"
    argv = ["run", str(images), "--out", str(out), "--set", f"model.base={tiny_sd_dir}"]
    for item in SD:
        argv += ["--set", item]
    assert main(argv) == 0
    return {"out": out, "store": RunStore(str(out)), "base": tiny_sd_dir}


def test_latents_are_cached_once_per_image_at_their_aspect_ratio(sd_run) -> None:
    store = sd_run["store"]
    parts = sorted(p.name for p in (sd_run["out"] / "latents").glob("part-*.parquet"))
    assert len(parts) == 3  # 10 images in shards of 4
    lat = pd.concat([store.read_parquet(f"latents/{p}") for p in parts])
    assert len(lat) == 10 and lat["image_id"].is_unique
    assert set(zip(lat["height"], lat["width"])) == {(4, 6), (4, 4), (6, 4)}  # 24x16 / 16x16 / 16x24 px (w x h), /4
    assert (lat["channels"] == 4).all()


def test_model_is_a_loadable_sd_directory_with_the_prompts(sd_run) -> None:
    model_dir = sd_run["out"] / "model"
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (model_dir / part).exists(), part
    model = load_any_model(model_dir)
    assert isinstance(model, StableDiffusion)
    assert set(model.labels) == {"red_car", "blue car"}
    assert set(model.prompts[1:]) == {"A photo of a red car.", "A photo of a blue car."} and model.prompts[0] == ""
    history = sd_run["store"].read_parquet("training.parquet")
    assert history["step"].tolist() == [0, 1] and np.isfinite(history["loss"]).all()
    assert not (sd_run["out"] / "checkpoints").exists()  # removed once the model is published


def test_samples_of_a_latent_model_are_decoded_latents(sd_run) -> None:
    """The samples stage draws latents (4 x 4 at 16 px with the tiny VAE's factor 4) and decodes
    them to working-resolution images, compared with the real images on the pca features."""
    store = sd_run["store"]
    table = store.read_parquet("samples.parquet")
    assert len(table) == 8 * 2 and set(table["label"]) == {"red_car", "blue car"}
    assert {Image.open(io.BytesIO(b)).size for b in table["png"]} == {(16, 16)}
    quality = store.read_parquet("sample_quality.parquet").set_index("label")
    assert quality.loc["(all)", "real_images"] == 10 and np.isfinite(quality["frechet"]).all()
    report = (sd_run["out"] / "report" / "index.html").read_text()
    assert '<section id="samples">' in report


def test_maps_at_latent_resolution_and_patches_in_original_pixels(sd_run) -> None:
    store = sd_run["store"]
    maps = pd.concat([store.read_parquet(f"maps/{p.name}") for p in (sd_run["out"] / "maps").glob("part-*.parquet")])
    assert len(maps) == 10
    for (h, w), m in zip(zip(maps["height"], maps["width"]), unpack_map_rows(maps)):
        assert m.shape == (h, w) and np.isfinite(m).all()
    manifest = store.read_parquet("manifest.parquet").set_index("image_id")
    patches = store.read_parquet("patches.parquet")
    assert len(patches) == 20 and set(patches["rank"]) == {0, 1}
    for _, p in patches.iterrows():
        w, h = manifest.loc[p["image_id"], ["width", "height"]]
        assert 0 <= p["x0"] < p["x1"] <= w and 0 <= p["y0"] < p["y1"] <= h
        # a 6-pixel working patch, scaled per axis by original / working size (covering every
        # original pixel it touches: at most one more pixel at each end)
        ww, wh = working_size(w, h, 16, "short_side")
        sx, sy = 6 * w / ww, 6 * h / wh
        assert sx - 1e-9 <= p["x1"] - p["x0"] < sx + 2 and sy - 1e-9 <= p["y1"] - p["y0"] < sy + 2
    elements = store.read_parquet("elements.parquet")
    assert set(elements["label"]) == {"red_car", "blue car"}
    assert (sd_run["out"] / "report" / "index.html").exists()
    info = json.loads((sd_run["out"] / "run.json").read_text())
    assert info["config"]["model"]["base"] == str(sd_run["base"])
    assert info["summary"]["model"].startswith(
        f"Stable Diffusion 1.x/2.x {sd_run['base']} (StableDiffusionPipeline, epsilon"
    )
    assert "full UNet fine-tuned; working images 16 px short side" in info["summary"]["model"]
    assert info["summary"]["model_family"]["family"] == "sd" and info["stages"]["latents"]["family"] == "sd"
    assert "A photo of a {label}." in (sd_run["out"] / "report" / "index.html").read_text()
    assert info["stages"]["latents"]["images"] == 10 and info["stages"]["latents"]["base"] == str(sd_run["base"])


def test_rerun_reuses_latents_model_and_scores(sd_run) -> None:
    """The same command again: nothing is re-encoded, retrained or rescored."""
    from gcmine.flows.config import load_settings
    from gcmine.flows.pipeline import run_pipeline

    settings = load_settings(None, [f"model.base={sd_run['base']}", *SD])
    result = run_pipeline(str(sd_run["out"].parent / "images"), str(sd_run["out"]), None, settings)
    assert "finetune" in result["reused"]
    assert sum(r.startswith("latents[") for r in result["reused"]) == 3
    assert sum(r.startswith("score[") for r in result["reused"]) == 3


def test_not_an_sd_directory_is_a_clear_error(prefect_harness, tmp_path, capsys) -> None:
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(images / "x.png")
    bad = tmp_path / "not-sd"
    (bad / "unet").mkdir(parents=True)
    code = main(
        [
            "run",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "out"),
            "--set",
            f"model.base={bad}",
            "--set",
            "data.resolution=16",
            "--set",
            "runtime.progress=false",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.base" in err and "vae/" in err and "tokenizer/" in err and str(bad) in err


@pytest.mark.parametrize("block", [2, -3])
def test_feature_block_outside_the_checkpoints_unet_fails_before_any_work(
    prefect_harness, tiny_sd_dir, tmp_path, capsys, block
) -> None:
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (255, 0, 40 * i)).save(images / f"{i}.png")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(tmp_path / "images"),
            "--out",
            str(out),
            "--set",
            f"model.base={tiny_sd_dir}",
            "--set",
            f"rank.feature_block={block}",
            "--set",
            "data.resolution=16",
            "--set",
            "runtime.progress=false",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"rank.feature_block ({block})" in err and "2 decoder blocks" in err and "from -2 to 1" in err
    assert not (out / "latents").exists() and not (out / "model").exists()


def test_half_precision_or_cuda_on_a_cpu_machine_is_a_configuration_error(prefect_harness, tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(images / "x.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(images / "y.png")
    for setting, words in (
        ("runtime.precision=fp16", "runtime.precision='fp16'"),
        ("runtime.device=cuda", "CUDA is not available"),
    ):
        code = main(
            [
                "run",
                str(tmp_path / "images"),
                "--out",
                str(tmp_path / "out"),
                "--set",
                setting,
                "--set",
                "data.resolution=16",
                "--set",
                "runtime.progress=false",
                "--set",
                "train.steps=1",
            ]
        )
        assert code == 2
        assert words in capsys.readouterr().err


def test_unlabelled_images_added_to_an_sd_run_flow_through_every_stage(sd_run, tmp_path) -> None:
    """Issue 22: new images without a label get a shard of their own (no labelled image in it):
    latents, scoring (nothing to score) and ranking (no patch) run on it; nothing fails."""
    import shutil

    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(sd_run["out"].parent / "images", images)
    shutil.copytree(sd_run["out"], out)
    rng = np.random.default_rng(3)
    for i in range(2):  # at the top of the folder: no folder label
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(images / f"unlabelled-{i}.png")
    argv = ["run", str(images), "--out", str(out), "--set", f"model.base={sd_run['base']}"]
    for item in SD:
        argv += ["--set", item]
    assert main(argv) == 0
    store = RunStore(str(out))
    manifest = store.read_parquet("manifest.parquet")
    new = manifest[manifest["filename"].str.startswith("unlabelled-")]
    assert len(new) == 2 and new["label"].isna().all() and new["shard"].nunique() == 1
    assert not set(store.read_parquet("typicality.parquet")["image_id"]) & set(new["image_id"])
    assert len(list((out / "latents").glob(f"{new['shard'].iloc[0].removesuffix('.parquet')}-*.parquet"))) == 1


def test_compare_base_scores_with_the_checkpoint_before_fine_tuning(sd_run, tmp_path) -> None:
    """score.compare_base: the same images scored with the base checkpoint too (same draws),
    stored apart and recorded in run.json; `gcmine evaluate` then evaluates both models."""
    import shutil

    from gcmine.tasks.infra.artifacts import EVALUATION_SUMMARY, RUN_JSON

    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(sd_run["out"].parent / "images", images)
    shutil.copytree(sd_run["out"], out)  # a rerun: only the scoring is new
    argv = ["run", str(images), "--out", str(out), "--set", f"model.base={sd_run['base']}"]
    for item in [*SD, "score.compare_base=true"]:
        argv += ["--set", item]
    assert main(argv) == 0
    store = RunStore(str(out))
    score = store.read_json(RUN_JSON)["stages"]["score"]
    assert score["maps_base"] and all(p.startswith("maps_base/part-") for p in score["maps_base"])
    tuned = pd.concat([store.read_parquet(p) for p in score["maps"]]).sort_values("image_id")
    base = pd.concat([store.read_parquet(p) for p in score["maps_base"]]).sort_values("image_id")
    assert tuned["image_id"].tolist() == base["image_id"].tolist() and len(base) == 10
    tuned_maps, base_maps = unpack_map_rows(tuned), unpack_map_rows(base)
    assert all(a.shape == b.shape for a, b in zip(tuned_maps, base_maps))
    assert any(not np.allclose(a, b) for a, b in zip(tuned_maps, base_maps))  # two models, two sets of maps
    manifest = store.read_parquet("manifest.parquet")
    boxes = manifest.assign(
        filename=manifest["label"] + "/" + manifest["filename"],  # folder/name: the names repeat across folders
        x0=0,
        y0=0,
        x1=manifest["width"] // 2,
        y1=manifest["height"] // 2,
    )
    boxes[["filename", "label", "x0", "y0", "x1", "y1"]].to_csv(tmp_path / "boxes.csv", index=False)
    assert main(["evaluate", str(out), "--boxes", str(tmp_path / "boxes.csv")]) == 0
    summary = store.read_parquet(EVALUATION_SUMMARY)
    assert set(summary["model"]) == {"base", "finetuned", "finetuned - base"}
    pooled = summary[summary["label"] == "(all)"].set_index("model")
    assert (
        pooled.loc["base", "pairs"] == pooled.loc["finetuned", "pairs"] == pooled.loc["finetuned - base", "pairs"] == 10
    )
    table = store.read_parquet("evaluation.parquet")  # the difference: the mean of the per-image differences
    per_image = table.pivot_table(index=["image_id", "label"], columns="model", values="ap")
    assert pooled.loc["finetuned - base", "ap"] == pytest.approx((per_image["finetuned"] - per_image["base"]).mean())
    html = (out / "report" / "index.html").read_text()
    assert re.search(r"<td[^>]*>base</td>", html) and re.search(r"<td[^>]*>finetuned</td>", html)  # side by side


def test_compare_base_needs_model_base() -> None:
    from gcmodels.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"score\.compare_base needs model\.base"):
        Settings.from_dict({"score": {"compare_base": True}})
