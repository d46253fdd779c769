"""The applications in the flow (issue 9): cotypicality with a held-out split and the typicality
classifier, translation across labels and the classic baseline, on tiny settings, in one run."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import TYPICALITY_COLUMNS, unpack_maps
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

LABELS = ("circle", "cross", "square")
PER_LABEL = 8
TINY = tiny_settings(
    "data.shard_size=10",
    "score.cotypicality=true",
    "score.holdout=0.25",
    "translate.enabled=true",
    "translate.images_per_label=2",
    "translate.steps=4",
    "translate.strength=0.5",
    "translate.clusters=2",
    "baseline.enabled=true",
    "baseline.detectors=2",
    "baseline.keep=1",
    "baseline.rounds=1",
)


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("apps")
    images = root / "images"
    for i, item in enumerate(motif_dataset(n_per_label=PER_LABEL, size=24, labels=LABELS, seed=5)):
        (images / item.label).mkdir(parents=True, exist_ok=True)
        item.image.save(images / item.label / f"img{i:02d}.png")
    out = root / "out"
    argv = ["run", str(images), "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0
    return {"out": out, "store": RunStore(str(out)), "stderr": err.getvalue()}


def test_cotypicality_rows_and_own_label_maps(run) -> None:
    s = run["store"]
    m = s.read_parquet("manifest.parquet")
    own = m[m["status"] == "ok"].set_index("image_id")["label"]
    typ = s.read_parquet("typicality.parquet")
    assert list(typ.columns) == TYPICALITY_COLUMNS
    assert len(typ) == len(own) * len(LABELS) and not typ.duplicated(["image_id", "label"]).any()
    assert set(typ["label"]) == set(LABELS)
    assert (typ["image_label"].to_numpy() == own.reindex(typ["image_id"]).to_numpy()).all()
    # every (image, label) score carries its precision: all draws, a standard error, no patch error
    assert (typ["draws"] > 0).all() and typ["draws"].nunique() == 1
    assert (typ["typicality_se"] >= 0).all() and typ["top_patch_se"].isna().all()
    # the maps rank reads are each image's label contrast (score.contrast's default with 3 labels): its
    # own-label typicality minus the mean of its typicalities under the other labels, on the same draws
    info = json.loads((run["out"] / "run.json").read_text())
    assert info["stages"]["score"]["maps_kind"] == "label contrast (all)"  # cotypicality scores every label anyway
    maps = pd.concat([s.read_parquet(name) for name in info["stages"]["score"]["maps"]])
    assert len(maps) == len(own) and (maps["label"].to_numpy() == own.reindex(maps["image_id"]).to_numpy()).all()
    wide = typ.pivot(index="image_id", columns="label", values="typicality")[list(LABELS)]
    mine = np.array([wide.loc[i, own[i]] for i in wide.index])
    contrast = pd.Series(mine - (wide.sum(1).to_numpy() - mine) / (len(LABELS) - 1), index=wide.index)
    np.testing.assert_allclose(
        unpack_maps(maps).mean((1, 2)), contrast.loc[maps["image_id"]].to_numpy(), rtol=1e-4, atol=1e-6
    )
    html = (run["out"] / "report" / "index.html").read_text()
    assert "Maps are <b>label contrast</b> (all)" in html and "number = patch contrast" in html
    # the label matrix is the mean of those rows
    lm = s.read_parquet("label_matrix.parquet")
    assert list(lm.columns) == ["image_label", "label", "typicality", "images"] and len(lm) == len(LABELS) ** 2
    want = typ.groupby(["image_label", "label"])["typicality"].mean()
    got = lm.set_index(["image_label", "label"])["typicality"]
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-9)
    assert (lm["images"] == PER_LABEL).all()


def test_held_out_images_are_not_trained_on_and_the_classifier_is_scored_on_them(run) -> None:
    s = run["store"]
    trained = set(s.read_parquet("model/training_set.parquet")["image_id"])
    cls = s.read_parquet("classification.parquet")
    assert list(cls.columns) == ["image_id", "label", "predicted", "held_out"]
    held = cls[cls["held_out"]]
    assert held.groupby("label").size().to_dict() == {lab: round(0.25 * PER_LABEL) for lab in LABELS}
    assert not set(held["image_id"]) & trained and set(cls["image_id"]) == trained | set(held["image_id"])
    # predictions are the argmax of the cotypicality rows
    typ = s.read_parquet("typicality.parquet")
    best = typ.sort_values("typicality", ascending=False).drop_duplicates("image_id").set_index("image_id")["label"]
    assert (cls.set_index("image_id")["predicted"] == best.reindex(cls["image_id"]).to_numpy()).all()
    conf = s.read_parquet("confusion.parquet")
    assert list(conf.columns) == ["true", "predicted", "count"] and conf["count"].sum() == len(held)
    accuracy = float((held["label"] == held["predicted"]).mean())
    diag = conf[conf["true"] == conf["predicted"]]["count"].sum()
    assert diag / len(held) == pytest.approx(accuracy)
    info = json.loads((run["out"] / "run.json").read_text())
    assert info["stages"]["classify"]["accuracy"] == pytest.approx(accuracy)
    assert info["stages"]["classify"]["split"] == "held-out" and info["stages"]["finetune"]["held_out"] == len(held)
    # printed at the end of the run
    err = run["stderr"]
    assert "== typicality as a classifier ==" in err
    assert f"accuracy {100 * accuracy:.1f}% on {len(held)} held-out images" in err


def test_translations_and_change_clusters(run) -> None:
    s, out = run["store"], run["out"]
    tr = s.read_parquet("translations.parquet")
    assert len(tr) == 2 * len(LABELS) * (len(LABELS) - 1)
    assert (tr["label"] != tr["target"]).all() and set(tr["target"]) == set(LABELS)
    assert (tr.groupby("image_id")["target"].nunique() == len(LABELS) - 1).all()
    assert tr["typicality"].notna().all() and tr["typicality_source"].notna().all() and (tr["change"] > 0).all()
    for path in list(tr["file"]) + list(tr["source_file"].unique()):
        img = Image.open(out / path)
        assert img.size == (16, 16)
    # a source PNG is the working image of its source (not a translation)
    first = tr.iloc[0]
    assert not np.array_equal(
        np.asarray(Image.open(out / first["file"])), np.asarray(Image.open(out / first["source_file"]))
    )
    ch = s.read_parquet("translation_changes.parquet")
    assert len(ch) == len(tr) and set(ch["pair"]) == set(tr["pair"])
    assert set(ch["change_cluster"]) <= {0, 1} and ((ch["x1"] - ch["x0"]) == 3).all()


def test_baseline_and_report_sections(run) -> None:
    s, out = run["store"], run["out"]
    base = s.read_parquet("baseline.parquet")
    assert list(base.columns) == [
        "label",
        "detector",
        "rank",
        "image_id",
        "image_label",
        "x0",
        "y0",
        "x1",
        "y1",
        "score",
    ]
    assert set(base["label"]) == set(LABELS) and (base["detector"] == 0).all()
    assert (base.groupby("label")["image_id"].nunique() == len(LABELS) * PER_LABEL).all()
    assert ((0 <= base["x0"]) & (base["x0"] < base["x1"]) & (base["x1"] <= 24)).all()
    assert len(s.read_parquet("baseline_detectors.parquet")) == 2 * len(LABELS)
    info = json.loads((out / "run.json").read_text())
    assert {"classify", "translate", "baseline"} <= set(info["timings"])
    html = (out / "report" / "index.html").read_text()
    for anchor in ("cotypicality", "translation", "baseline"):
        assert f'id="{anchor}"' in html and f'href="#{anchor}"' in html
    assert "accuracy on 6 held-out images" in html and "Most confused labels" in html
    assert "Consistent changes" in html and "baseline" in html and "held-out purity" in html
    assert 'src="http' not in html and "<script src" not in html
    assert html.count("<script") == 1  # the fixed hover script of the collection map, nothing from the data


def test_typicality_maps_in_the_same_run_root(run) -> None:
    """score.contrast=false (last in this file: it re-runs the root): the maps rank reads become
    the paper's typicality maps, each image's map under its own label, whose means are the own-label
    cotypicality rows; the rows and the fine-tuned model are reused unchanged."""
    s, out = run["store"], run["out"]
    before = s.read_parquet("typicality.parquet")
    argv = ["run", str(out.parent / "images"), "--out", str(out)]
    for item in [*TINY, "score.contrast=false", "translate.enabled=false", "baseline.enabled=false"]:
        argv += ["--set", item]
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["finetune"]["reused"] is True  # the same model: only score and what follows re-ran
    assert info["stages"]["score"]["maps_kind"] == "typicality"
    typ = s.read_parquet("typicality.parquet")
    pd.testing.assert_frame_equal(typ, before)  # the rows are T(x | label) either way, on the same draws
    maps = pd.concat([s.read_parquet(name) for name in info["stages"]["score"]["maps"]])  # this run's maps
    mine = typ[typ["label"] == typ["image_label"]].set_index("image_id")["typicality"]
    assert len(maps) == len(mine)
    np.testing.assert_allclose(
        mine.loc[maps["image_id"]].to_numpy(), unpack_maps(maps).mean((1, 2)), rtol=1e-5, atol=1e-7
    )
    assert set(s.read_parquet("patches.parquet")["label"]) == set(LABELS)
    html = (out / "report" / "index.html").read_text()
    assert "number = patch typicality" in html and "label contrast" not in html


def test_contrast_with_one_label_is_refused_in_one_line(prefect_harness, tmp_path, capsys) -> None:
    """score.contrast=true on a collection of one label: the run stops after ingest with one line naming the
    images and what to set (exit code 2, no traceback)."""
    images = tmp_path / "images" / "circle"
    images.mkdir(parents=True)
    for i, item in enumerate(motif_dataset(n_per_label=3, size=24, labels=("circle",), seed=2)):
        item.image.save(images / f"img{i}.png")
    argv = ["run", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    for item in [*TINY, "score.contrast=true"]:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"gcmine: {tmp_path / 'images'}: score.contrast=true needs 2 labels or more, this run has 1" in err
    assert "set score.contrast=false" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model").exists()  # no model work was done
