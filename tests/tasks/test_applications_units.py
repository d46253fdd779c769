"""Unit checks of the application helpers of the tasks layer (no Prefect run): the held-out
split, the rows of typicality.parquet, the classifier summary, the translation sources and the
report sections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmine.tasks.classify import classification_summary, cotypicality_scores
from gcmine.tasks.finetune import holdout_split
from gcmine.tasks.infra.artifacts import TYPICALITY_COLUMNS
from gcmine.tasks.reporting import baseline_section, cotypicality_section, translation_section
from gcmine.tasks.score import score_rows
from gcmine.tasks.translate import source_images


def _meta(n_per_label: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{lab}-{i:03d}", lab) for lab, n in n_per_label.items() for i in range(n)]
    rows.append(("unlabelled-0", None))
    return pd.DataFrame(rows, columns=["image_id", "label"])


def test_holdout_split_is_stratified_deterministic_and_order_free() -> None:
    meta = _meta({"a": 10, "b": 5, "c": 1})
    held = holdout_split(meta, 0.2, seed=0)
    labels = meta.set_index("image_id")["label"]
    assert sorted(labels[list(held)].value_counts().to_dict().items()) == [("a", 2), ("b", 1)]  # c: one image stays
    assert "unlabelled-0" not in held
    assert holdout_split(meta.sample(frac=1, random_state=1), 0.2, seed=0) == held  # file order does not matter
    assert holdout_split(meta, 0.2, seed=1) != held
    assert holdout_split(meta, 0.0, seed=0) == set()


def test_score_rows_one_per_image_or_per_image_and_label() -> None:
    maps = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)
    plain = score_rows(["x", "y"], ["a", "b"], maps.reshape(2, -1).mean(1), ["a", "b"], None)
    assert list(plain.columns) == TYPICALITY_COLUMNS  # the precision columns of issue 19 after the old ones
    assert TYPICALITY_COLUMNS[:4] == ["image_id", "label", "image_label", "typicality"]
    assert plain["typicality"].tolist() == [1.5, 5.5] and (plain["label"] == plain["image_label"]).all()
    co = score_rows(["x", "y"], ["a", "b"], maps, ["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert co[["image_id", "label", "image_label"]].values.tolist() == [
        ["x", "a", "a"],
        ["x", "b", "a"],
        ["y", "a", "b"],
        ["y", "b", "b"],
    ]
    assert co["typicality"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_classifier_uses_held_out_images_and_falls_back_to_all() -> None:
    typ = score_rows(
        ["x", "y", "z"],
        ["a", "b", "b"],
        np.zeros(3),
        ["a", "b"],
        np.array([[2.0, 1.0], [3.0, 0.0], [0.0, 1.0]]),
    )
    images, scores = cotypicality_scores(typ, ["a", "b"])
    assert images["image_id"].tolist() == ["x", "y", "z"] and scores.shape == (3, 2)
    found = classification_summary(images, scores, ["a", "b"], trained={"x"})
    assert found["split"] == "held-out" and found["images"] == 2 and found["accuracy"] == 0.5
    assert found["predicted"].tolist() == ["a", "a", "b"] and found["train_accuracy"] == 1.0
    assert found["confusion"].to_numpy().tolist() == [[0, 0], [1, 1]]
    assert found["confused"][["true", "predicted", "count"]].values.tolist() == [["b", "a", 1]]
    every = classification_summary(images, scores, ["a", "b"], trained={"x", "y", "z"})
    assert every["split"] == "training" and every["images"] == 3
    with pytest.raises(ValueError, match="not every image is scored under every label"):
        cotypicality_scores(typ[~((typ["image_id"] == "y") & (typ["label"] == "a"))], ["a", "b"])


def test_translation_sources_prefer_the_best_element() -> None:
    patches = pd.DataFrame(
        {
            "image_id": ["p", "q", "r", "s", "t"],
            "label": ["a", "a", "a", "b", "b"],
            "element": [1, 0, 0, 0, -1],
            "typicality": [9.0, 1.0, 2.0, 1.0, 5.0],
        }
    )
    elements = pd.DataFrame({"label": ["a", "a", "b"], "element": [0, 1, 0], "rank": [0, 1, 0]})
    got = source_images(patches, elements, per_label=2)
    assert got.values.tolist() == [["r", "a"], ["q", "a"], ["s", "b"], ["t", "b"]]


def test_sections_escape_labels_and_show_the_numbers() -> None:
    labels = ["<i>a</i>", "b"]
    lm = pd.DataFrame(
        {
            "image_label": ["<i>a</i>", "<i>a</i>", "b", "b"],
            "label": labels * 2,
            "typicality": [0.5, 0.1, 0.2, 0.4],
            "images": [2, 2, 3, 3],
        }
    )
    conf = pd.DataFrame({"true": ["<i>a</i>", "<i>a</i>", "b", "b"], "predicted": labels * 2, "count": [1, 1, 0, 2]})
    result = {
        "labels": labels,
        "split": "held-out",
        "images": 4,
        "accuracy": 0.75,
        "train_accuracy": 1.0,
        "confused": [{"true": "<i>a</i>", "predicted": "b", "count": 1, "share": 0.5}],
    }
    html = cotypicality_section(lm, conf, result)
    assert "<i>a</i>" not in html and "&lt;i&gt;a&lt;/i&gt;" in html
    assert "75.0%" in html and "accuracy on 4 held-out images" in html and "50.0%" in html
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    tr = pd.DataFrame(
        {
            "pair": [0],
            "image_id": ["x"],
            "label": ["a"],
            "target": ["b"],
            "strength": [0.5],
            "guidance": [1.0],
            "seed": [0],
            "typicality_source": [0.1],
            "typicality": [0.3],
            "change": [0.2],
            "file": ["t.png"],
            "source_file": ["s.png"],
        }
    )
    ch = pd.DataFrame(
        {
            "pair": [0],
            "image_id": ["x"],
            "label": ["a"],
            "target": ["b"],
            "rank": [0],
            "x0": [1],
            "y0": [1],
            "x1": [4],
            "y1": [4],
            "change": [0.2],
            "change_cluster": [0],
            "distance": [0.0],
        }
    )
    html = translation_section(
        tr, ch, lambda path: img if path == "s.png" else None, {"seconds": 1.0, "typicality_gain": 0.2}
    )
    # the source and the "before" crop are shown; the missing translation twice as a placeholder
    assert html.count("data:image/png;base64,") == 2 and html.count("image unavailable") == 2
    assert "0.1 → 0.3" in html and "#1" in html
    base = pd.DataFrame(
        {
            "label": ["b"],
            "detector": [0],
            "rank": [0],
            "image_id": ["x"],
            "image_label": ["b"],
            "x0": [0],
            "y0": [0],
            "x1": [4],
            "y1": [4],
            "score": [1.5],
        }
    )
    det = pd.DataFrame({"label": ["b"], "detector": [0], "purity": [0.8], "top_score": [1.0]})
    html = baseline_section(
        base,
        det,
        pd.DataFrame(columns=["label", "element", "rank"]),
        pd.DataFrame(),
        lambda i: img,
        {"typicality": 90.0, "baseline": 3.0},
    )
    assert "1 min 30 s" in html and "3.0 s" in html and "held-out purity 0.8" in html
