"""Multi-label images through the whole flow: labels joined in the labels file and on repeated
rows, the model trained on the sets, every image scored and mined under each of its labels, the
report, and `gcmine evaluate` with boxes of both labels of an image."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import (
    CLASSIFICATION,
    CONFUSION,
    ELEMENTS,
    EVALUATION,
    MANIFEST,
    PATCHES,
    RUN_JSON,
    SHARDS_META,
    TYPICALITY,
    unpack_map_rows,
)
from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import ScoreConfig
from gcmodels.data.synthetic import motif_dataset
from gcmodels.diffusion import load_any_model
from gcmodels.mining.typicality import TypicalityEstimator

pytestmark = pytest.mark.slow

TINY = tiny_settings("report.samples=2", "report.sample_steps=2")


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory) -> dict:
    """12 images of 3 labels; every third image carries a second label (in the value, joined by
    |, or on a repeated row of its file name)."""
    root = tmp_path_factory.mktemp("multilabel")
    images = root / "images"
    images.mkdir()
    rows, boxes, expected = [], [], {}
    for i, item in enumerate(motif_dataset(n_per_label=4, size=24, labels=("circle", "cross", "square"), seed=3)):
        name = f"{i:02d}.png"
        item.image.save(images / name)
        other = "cross" if item.label != "cross" else "square"
        if i % 3 == 0:
            rows.append({"filename": name, "label": f"{other} | {item.label}"})
            expected[name] = "|".join(sorted([item.label, other]))
        elif i % 3 == 1:
            rows += [{"filename": name, "label": item.label}, {"filename": name, "label": other}]
            expected[name] = "|".join(sorted([item.label, other]))
        else:
            rows.append({"filename": name, "label": item.label})
            expected[name] = item.label
        for label in expected[name].split("|"):  # a box per label: the motif's for its own, the ring's for the other
            x0, y0, x1, y1 = item.box if label == item.label else item.distractor_box
            boxes.append({"filename": name, "label": label, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    out = root / "out"
    argv = ["run", str(images), "--labels", str(root / "labels.csv"), "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return {"root": root, "out": out, "expected": expected, "boxes": pd.DataFrame(boxes)}


def test_the_manifest_and_the_model_hold_the_label_sets(run) -> None:
    store = RunStore(str(run["out"]))
    manifest = store.read_parquet(MANIFEST).set_index("filename")
    assert manifest["label"].to_dict() == run["expected"]
    model = load_any_model(run["out"] / "model")
    assert model.labels == ("circle", "cross", "square")
    assert set(model.label_sets) == {tuple(v.split("|")) for v in run["expected"].values() if "|" in v}
    counts = Counter(lab for v in run["expected"].values() for lab in v.split("|"))  # an image counts for each label
    assert store.read_json(RUN_JSON)["summary"]["label_counts"] == dict(counts)


def test_each_image_is_scored_under_each_of_its_labels(run) -> None:
    store = RunStore(str(run["out"]))
    manifest = store.read_parquet(MANIFEST)
    typicality = store.read_parquet(TYPICALITY)
    own = manifest.set_index("image_id")["label"]
    pairs = sorted((i, lab) for i, v in own.items() for lab in v.split("|"))
    assert sorted(zip(typicality["image_id"], typicality["label"])) == pairs
    assert (typicality["image_label"] == own.reindex(typicality["image_id"]).to_numpy()).all()
    # the map of a multi-label image under each label is the estimator's map under that label (label
    # contrast by default: its other own label is one of the rivals)
    maps = pd.concat([store.read_parquet(p) for p in store.read_json(RUN_JSON)["stages"]["score"]["maps"]])
    multi = own[own.str.contains("|", regex=False)].index[0]
    sel = maps[maps["image_id"] == multi].reset_index(drop=True)
    assert sorted(sel["label"]) == sorted(own[multi].split("|"))
    model = load_any_model(run["out"] / "model").eval()
    from gcmine.tasks.infra.artifacts import read_images

    shards = [s["name"] for s in store.read_json(SHARDS_META)["shards"]]
    meta, pixels = read_images(store, shards)
    x = torch.from_numpy(pixels[list(meta["image_id"]).index(multi)].transpose(2, 0, 1).copy())[None]
    score = ScoreConfig(draws=2, batch_size=8)
    estimator = TypicalityEstimator(draws=score.draws, t_min=score.t_min, t_max=score.t_max, batch_size=8)
    for label, stored in zip(sel["label"], unpack_map_rows(sel)):
        with torch.no_grad():
            direct = estimator.contrast_maps(model, model.encode(x), model.label_index([label]), len(model.labels))
        direct = direct[0].numpy()
        np.testing.assert_allclose(stored, direct, rtol=1e-5, atol=1e-7)


def test_patches_and_elements_per_label(run) -> None:
    store = RunStore(str(run["out"]))
    patches, elements = store.read_parquet(PATCHES), store.read_parquet(ELEMENTS)
    typicality = store.read_parquet(TYPICALITY)
    assert set(zip(patches["image_id"], patches["label"])) == set(zip(typicality["image_id"], typicality["label"]))
    assert set(elements["label"]) == {"circle", "cross", "square"}  # single labels, never a set
    html = (run["out"] / "report" / "index.html").read_text()
    sections = re.findall(r'<section class="label" id="[^"]*"><h2>([^<]*)</h2>', html)
    assert sections == ["circle", "cross", "square"]  # a section per single label, never one per set


def test_evaluate_scores_the_boxes_of_both_labels_of_an_image(run, tmp_path) -> None:
    path = tmp_path / "boxes.csv"
    run["boxes"].to_csv(path, index=False)
    assert main(["evaluate", str(run["out"]), "--boxes", str(path)]) == 0
    table = RunStore(str(run["out"])).read_parquet(EVALUATION)
    assert (table["status"] == "ok").all() and len(table) == len(run["boxes"])
    two = table.groupby("filename")["label"].nunique()
    assert (two == 2).sum() == sum("|" in v for v in run["expected"].values())


def test_cotypicality_and_the_classifier_with_multi_label_images(run, tmp_path) -> None:
    """Every image under every label once; the classifier counts a prediction of any of an
    image's labels as a hit, and an image of two labels in both rows of the confusion matrix."""
    out = tmp_path / "co"
    argv = ["run", str(run["root"] / "images"), "--labels", str(run["root"] / "labels.csv"), "--out", str(out)]
    for item in [*TINY, "score.cotypicality=true", "report.samples=0"]:
        argv += ["--set", item]
    assert main(argv) == 0
    store = RunStore(str(out))
    typicality = store.read_parquet(TYPICALITY)
    assert len(typicality) == 12 * 3 and not typicality.duplicated(["image_id", "label"]).any()
    classified = store.read_parquet(CLASSIFICATION)
    own = classified["label"].map(lambda v: v.split("|"))  # the image's own labels
    hits = [p in labs for p, labs in zip(classified["predicted"], own)]
    confusion = store.read_parquet(CONFUSION)
    assert int(confusion["count"].sum()) == sum(len(labs) for labs in own)
    info = store.read_json(RUN_JSON)["stages"]["classify"]
    assert info["accuracy"] == pytest.approx(np.mean(hits))


def test_the_report_counts_labels_and_label_sets(run) -> None:
    html = (run["out"] / "report" / "index.html").read_text()
    sets = len({v for v in run["expected"].values() if "|" in v})
    assert f"3 label(s) (+ {sets} label set(s) of multi-label images)" in html
