"""The whole flow on a tiny random checkpoint of each family beyond SD 1.x (SDXL, SD3 with T5, DiT
with a class map) on CPU: latents, 2 LoRA fine-tuning steps, scoring, ranking with features,
translation across labels, report; then the fine-tuned directory reloads in the family's diffusers pipeline class. And the
refusals that must exit 2 before anything is written. (SD 1.x runs in test_sd_flow.py.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import unpack_map_rows
from gcmine.tasks.infra.storage import RunStore

pytestmark = pytest.mark.slow

COMMON = [
    "data.shard_size=8",
    "embed.method=diffusion",  # the collection embedded with the fine-tuned checkpoint's own features
    "embed.diffusion_grid=1",
    "embed.diffusion_draws=1",
    "cluster.k=2",
    "train.steps=2",
    "train.batch_size=2",
    "train.lora_rank=2",
    "train.checkpoint_every=1",
    "score.draws=2",
    "score.batch_size=8",
    "rank.per_image=1",
    "rank.elements=2",
    "rank.feature_draws=1",
    "rank.patch_size=8",
    "report.heatmaps_per_label=1",
    "runtime.progress=false",
    "runtime.threads=1",
    "translate.enabled=true",
    "translate.images_per_label=1",
    "translate.steps=2",
    "translate.strength=0.5",
    "translate.clusters=1",
]
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "dit": "DiTPipeline"}


def _images(root, labels, sizes) -> None:
    rng = np.random.default_rng(0)
    for j, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for i in range(3):
            w, h = sizes[i % len(sizes)]
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arr[..., j % 3] |= 0xC0
            Image.fromarray(arr).save(root / label / f"{i}.png")


@pytest.fixture(scope="module", params=["sdxl", "sd3", "dit"])
def family_run(request, prefect_harness, tiny_sdxl_dir, tiny_sd3_dir, tiny_dit_dir, tmp_path_factory) -> dict:
    family = request.param
    base = {"sdxl": tiny_sdxl_dir, "sd3": tiny_sd3_dir, "dit": tiny_dit_dir}[family]
    root = tmp_path_factory.mktemp(f"{family}-run")
    extra = [f"model.base={base}"]
    if family == "dit":  # names mapped to classes of the checkpoint by a CSV; square images at the fixed 32 px
        labels, sizes = ["shark", "hen"], [(40, 40), (36, 36)]
        (root / "classes.csv").write_text("label,class_id\nshark,2\nhen,8\n")
        extra += [f"model.class_map={root / 'classes.csv'}"]
    else:  # aspect ratios kept, at a 16 px short side
        labels, sizes = ["red_car", "blue car"], [(40, 24), (24, 24), (24, 36)]
        extra += ["data.resolution=16", "model.prompt_template=A photo of a {label}."]
    _images(root / "images", labels, sizes)
    argv = ["run", str(root / "images"), "--out", str(root / "out")]
    for item in COMMON + extra:
        argv += ["--set", item]
    assert main(argv) == 0
    return {"family": family, "out": root / "out", "base": base, "labels": labels}


def test_the_flow_mines_with_each_family_and_the_model_reloads_in_its_pipeline(family_run) -> None:
    import diffusers

    out, family = family_run["out"], family_run["family"]
    store = RunStore(str(out))
    maps = pd.concat([store.read_parquet(f"maps/{p.name}") for p in (out / "maps").glob("part-*.parquet")])
    assert len(maps) == 6 and all(np.isfinite(m).all() and m.any() for m in unpack_map_rows(maps))
    patches = store.read_parquet("patches.parquet")
    assert len(patches) == 6 and set(patches["label"]) == set(family_run["labels"])
    assert set(store.read_parquet("elements.parquet")["label"]) == set(family_run["labels"])
    assert (out / "report" / "index.html").exists()
    info = json.loads((out / "run.json").read_text())
    fam = info["summary"]["model_family"]
    assert fam["family"] == family and fam["pipeline"] == PIPELINES[family] and fam["fine_tuning"] == "LoRA rank 2"
    assert info["summary"]["model"].startswith({"sdxl": "SDXL ", "sd3": "SD3/SD3.5 ", "dit": "DiT "}[family])
    if family == "dit":
        assert (
            info["config"]["data"]["resolution"] == 32 and info["config"]["data"]["resize"] == "square"
        )  # the family's defaults
        assert "labels as class ids (model.class_map" in info["summary"]["model"]
    tr = store.read_parquet("translations.parquet")  # every family translates (latents, decoded by the VAE)
    assert len(tr) == 2 and set(tr["target"]) == set(family_run["labels"]) and np.isfinite(tr["typicality"]).all()
    for _, row in tr.iterrows():
        moved, source = (Image.open(out / row[c]) for c in ("file", "source_file"))
        assert moved.size == source.size and row["change"] > 0
    assert len(store.read_parquet("translation_changes.parquet")) == 2
    history = store.read_parquet("training.parquet")
    assert history["step"].tolist() == [0, 1] and np.isfinite(history["loss"]).all()
    embedded = info["stages"]["embed"]
    assert embedded["encoder"]["encoder"] == "diffusion-features" and embedded["encoder"]["family"] == family
    vectors = np.stack(store.read_parquet(embedded["embeddings"])["embedding"])
    assert vectors.shape[0] == 6 and vectors.shape[1] == embedded["dim"] > 0 and np.isfinite(vectors).all()
    assert vectors.std(axis=0).max() > 0  # the images differ, so do their features
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(out / "model")
    assert type(pipe).__name__ == PIPELINES[family]
    if family == "dit":
        assert pipe.get_label_ids(["shark", "hen"]) == [2, 8]
    meta = json.loads((out / "model" / "gcmine_model.json").read_text())
    assert meta["kind"] == family and sorted(meta["labels"]) == sorted(family_run["labels"])


def _one_image(tmp_path):
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(images / "x.png")
    return tmp_path / "images"


def test_a_guidance_distilled_model_exits_2_before_anything_is_written(tmp_path, capsys) -> None:
    from sd_tiny import build_flux_like

    flux = build_flux_like(tmp_path / "flux")
    out = tmp_path / "out"
    code = main(["run", str(_one_image(tmp_path)), "--out", str(out), "--set", f"model.base={flux}"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "model.base" in err and "FluxPipeline" in err and "unconditional" in err
    assert "StableDiffusionXLPipeline" in err and "DiTPipeline" in err
    # gcmine config says it too
    assert main(["config", "--set", f"model.base={flux}"]) == 2


@pytest.mark.parametrize(
    ("csv", "extra", "words"),
    [
        ("label,class_id\na,2\nb,12\n", [], "row 2: class_id '12' of 'b' is not an integer in 0..9"),
        ("name,id\na,2\n", [], "needs the columns label,class_id"),
        ("label,class_id\na,2\n", ["data.resolution=64"], "fixed sample size: working images must be square at 32 px"),
    ],
)
def test_a_bad_class_map_or_size_for_dit_exits_2_before_anything_is_written(
    prefect_harness, tiny_dit_dir, tmp_path, capsys, csv, extra, words
) -> None:
    (tmp_path / "classes.csv").write_text(csv)
    out = tmp_path / "out"
    argv = [
        "run",
        str(_one_image(tmp_path)),
        "--out",
        str(out),
        "--set",
        f"model.base={tiny_dit_dir}",
        "--set",
        f"model.class_map={tmp_path / 'classes.csv'}",
        "--set",
        "runtime.progress=false",
    ]
    for item in extra:
        argv += ["--set", item]
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert not (out / "manifest.parquet").exists() and not (out / "images").exists()


def test_dit_labels_without_a_class_exit_2_before_any_latent(prefect_harness, tiny_dit_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "run",
        str(_one_image(tmp_path)),
        "--out",
        str(out),
        "--set",
        f"model.base={tiny_dit_dir}",
        "--set",
        "runtime.progress=false",
    ]
    assert main(argv) == 2  # the label "a" is not a class id and there is no class map
    assert "labels without a class of the DiT checkpoint: ['a']" in capsys.readouterr().err
    assert (out / "manifest.parquet").exists() and not (out / "latents").exists()


def test_dit_with_multi_label_images_exits_2_before_any_latent(prefect_harness, tiny_dit_dir, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(images / "x.png")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "y.png")
    (tmp_path / "labels.csv").write_text("filename,label\nx.png,1|2\ny.png,2\n")  # labels that are class ids
    out = tmp_path / "out"
    argv = ["run", str(images), "--labels", str(tmp_path / "labels.csv"), "--out", str(out)]
    argv += ["--set", f"model.base={tiny_dit_dir}", "--set", "runtime.progress=false"]
    assert main(argv) == 2
    assert "conditioned on one class per image, but 1 image(s) carry several labels" in capsys.readouterr().err
    assert (out / "manifest.parquet").exists() and not (out / "latents").exists()


def test_a_class_map_for_a_prompt_model_and_a_transformer_feature_block_are_checked(
    prefect_harness, tiny_sd3_dir, tmp_path, capsys
) -> None:
    (tmp_path / "classes.csv").write_text("label,class_id\na,2\n")
    out = tmp_path / "out"
    base = [
        "run",
        str(_one_image(tmp_path)),
        "--out",
        str(out),
        "--set",
        f"model.base={tiny_sd3_dir}",
        "--set",
        "data.resolution=16",
        "--set",
        "runtime.progress=false",
    ]
    assert main(base + ["--set", f"model.class_map={tmp_path / 'classes.csv'}"]) == 2
    assert "applies to class-conditional checkpoints (DiT)" in capsys.readouterr().err
    assert main(base + ["--set", "rank.feature_block=2"]) == 2
    assert "must index one of the 2 transformer blocks of the SD3/SD3.5 model.base" in capsys.readouterr().err
    assert main(base + ["--set", "embed.method=diffusion", "--set", "embed.diffusion_block=-3"]) == 2
    assert "embed.diffusion_block (-3) must index one of the 2 transformer blocks" in capsys.readouterr().err
    assert not (out / "manifest.parquet").exists()


def test_gcmine_config_states_the_familys_defaults(tiny_sdxl_dir, tiny_dit_dir, capsys) -> None:
    assert main(["config", "--set", f"model.base={tiny_sdxl_dir}"]) == 0
    text = capsys.readouterr().out
    assert "# model.base is SDXL (StableDiffusionXLPipeline, epsilon" in text
    assert "data.resolution=1024" in text and "rank.feature_block=0" in text
    assert "resolution: 1024" in text and "# fine-tuning: full fine-tuning of a denoiser of" in text
    assert main(["config", "--set", f"model.base={tiny_dit_dir}"]) == 0
    text = capsys.readouterr().out
    assert "# model.base is DiT (DiTPipeline" in text and "resolution: 32" in text and "resize: square" in text
