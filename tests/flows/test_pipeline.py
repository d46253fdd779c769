"""The whole DAG on a tiny dataset, in the session's Prefect harness, checked against the
artifact contract of DESIGN.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from gcmodels.synthetic import motif_dataset
from tasks.artifacts import MANIFEST_COLUMNS, unpack_maps
from tasks.storage import RunStore

pytestmark = pytest.mark.slow

TINY = [
    "data.resolution=16", "data.shard_size=5", "embed.size=8", "embed.dim=4", "cluster.k=2",
    "model.block_out_channels=[8, 16]", "train.steps=3", "train.batch_size=4", "train.warmup_steps=1",
    "score.draws=2", "score.batch_size=8", "rank.per_image=2", "rank.elements=2", "rank.feature_draws=1",
    "report.heatmaps_per_label=1", "runtime.progress=false",
]
LABELS = ["circle", "<b>cross</b>"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """6 images per label in one flat folder, a labels CSV (one label with HTML in it), one corrupt
    file, one unlabelled image and one label row naming a missing file."""
    root = tmp_path_factory.mktemp("data")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rows = []
    items = motif_dataset(n_per_label=6, size=24, labels=("circle", "cross"), seed=3)
    for i, item in enumerate(items):
        label = LABELS[0] if item.label == "circle" else LABELS[1]
        name = f"sub/img{i:02d}.png" if i % 2 else f"img{i:02d}.png"
        item.image.save(images / name)
        rows.append({"filename": name if i % 3 else Path(name).name, "label": label})
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    rows.append({"filename": "broken.png", "label": LABELS[0]})
    items[0].image.transpose(0).save(images / "nolabel.png")
    rows.append({"filename": "ghost.png", "label": LABELS[1]})
    labels = root / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return {"images": images, "labels": labels, "n_ok": len(items) + 1}


@pytest.fixture(scope="module")
def run(prefect_harness, dataset, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["run", str(dataset["images"]), "--labels", str(dataset["labels"]), "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return {"out": out, "store": RunStore(str(out))}


def test_manifest_contract(run, dataset) -> None:
    m = run["store"].read_parquet("manifest.parquet")
    assert list(m.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert (m["status"] == "ok").sum() == dataset["n_ok"]
    bad = m[m["status"] == "rejected"]
    assert list(bad["filename"]) == ["broken.png"]
    assert bad["reason"].iloc[0]  # a precise reason is recorded
    ok = m[m["status"] == "ok"]
    assert ok["image_id"].is_unique and ok["image_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert set(ok["label"].dropna()) == set(LABELS)
    assert ok["label"].isna().sum() == 1  # nolabel.png: kept, unlabelled
    assert (ok["width"] == 24).all() and (ok["height"] == 24).all()


def test_tables_contract(run) -> None:
    s = run["store"]
    m = s.read_parquet("manifest.parquet")
    ok = m[m["status"] == "ok"].set_index("image_id")
    emb = s.read_parquet("embeddings.parquet")
    assert len(emb) == len(ok) and len(emb["embedding"].iloc[0]) == 4
    clusters = s.read_parquet("clusters.parquet")
    assert list(clusters.columns) == ["image_id", "cluster", "distance"]
    assert set(clusters["cluster"]) <= {0, 1} and (clusters["distance"] >= 0).all()
    metrics = s.read_parquet("cluster_metrics.parquet").set_index("metric")["value"]
    assert {"k", "silhouette", "calinski_harabasz", "nmi", "ari"} <= set(metrics.index)

    training = s.read_parquet("training.parquet")
    assert list(training.columns) == ["step", "loss", "lr", "seconds"] and list(training["step"]) == [0, 1, 2]

    typ = s.read_parquet("typicality.parquet")
    assert list(typ.columns) == ["image_id", "label", "image_label", "typicality"]
    assert (typ["label"] == typ["image_label"]).all()  # cotypicality off: one row per image, its own label
    labelled = ok[ok["label"].notna()]
    assert sorted(typ["image_id"]) == sorted(labelled.index)
    assert (typ.set_index("image_id")["label"] == labelled["label"].reindex(typ["image_id"]).values).all()
    maps = pd.concat([s.read_parquet(f"maps/{p.name}") for p in sorted((run["out"] / "maps").glob("part-*.parquet"))])
    means = unpack_maps(maps).reshape(len(maps), -1).mean(1)
    np.testing.assert_allclose(
        typ.set_index("image_id").loc[maps["image_id"], "typicality"].to_numpy(), means, rtol=1e-5, atol=1e-7
    )

    patches = s.read_parquet("patches.parquet")
    assert list(patches.columns[:9]) == ["image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality", "element"]
    assert set(patches["image_id"]) == set(typ["image_id"])
    assert (patches.groupby("image_id")["rank"].max() <= 1).all()
    w = ok.loc[patches["image_id"], "width"].to_numpy()
    h = ok.loc[patches["image_id"], "height"].to_numpy()
    assert ((0 <= patches["x0"]) & (patches["x0"] < patches["x1"]) & (patches["x1"] <= w)).all()
    assert ((0 <= patches["y0"]) & (patches["y0"] < patches["y1"]) & (patches["y1"] <= h)).all()
    # within an image, ranks follow typicality
    for _, g in patches.groupby("image_id"):
        assert g.sort_values("rank")["typicality"].is_monotonic_decreasing

    elements = s.read_parquet("elements.parquet")
    assert list(elements.columns) == ["label", "element", "rank", "score", "size"]
    for label, g in elements.groupby("label"):
        assert list(g.sort_values("rank")["rank"]) == list(range(len(g)))
        assert g.sort_values("rank")["score"].is_monotonic_decreasing
        members = patches[(patches["label"] == label) & (patches["element"] >= 0)]
        assert g.set_index("element")["size"].sort_index().tolist() == members["element"].value_counts().sort_index().tolist()
        for e, mem in members.groupby("element"):
            assert g.set_index("element").loc[e, "score"] == pytest.approx(float(np.median(mem["typicality"])))


def test_model_and_run_json(run) -> None:
    out = run["out"]
    assert (out / "model" / "unet" / "config.json").exists()
    assert json.loads((out / "model" / "gcmine_model.json").read_text())["labels"] == sorted(LABELS)
    for folder in (out, out / "model", out / "report"):
        info = json.loads((folder / "run.json").read_text())
        assert {"config", "code_version", "libraries", "seeds", "device", "timings"} <= set(info)
        assert {"ingest", "embed", "cluster", "finetune", "score", "rank"} <= set(info["timings"])
        assert info["config"]["train"]["steps"] == 3


def test_report_is_self_contained_and_escaped(run) -> None:
    html = (run["out"] / "report" / "index.html").read_text()
    assert "<b>cross</b>" not in html and "&lt;b&gt;cross&lt;/b&gt;" in html
    assert "data:image/png;base64," in html
    assert 'src="http' not in html and "<script" not in html


def test_prefect_ui_story(run) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    info = json.loads((run["out"] / "run.json").read_text())
    run_id = info["flow_run_id"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed()
        assert flow_run.name == "mine-images"
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        names = {t.name for t in client.read_task_runs(flow_run_filter=flt)}
        artifacts = client.read_artifacts(flow_run_filter=flt)
    for stage in ("ingest", "embed", "cluster", "finetune", "elements", "report"):
        assert any(n.startswith(stage) for n in names), (stage, names)
    shards = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert {f"score[{s}]" for s in shards} <= names and {f"rank[{s}]" for s in shards} <= names
    by_key = {a.key: a for a in artifacts if a.key}
    assert {"gcmine-summary", "gcmine-elements", "gcmine-report", "finetune-progress"} <= set(by_key)
    assert by_key["finetune-progress"].type == "progress" and float(by_key["finetune-progress"].data) == 100.0
    assert by_key["gcmine-elements"].type == "table"
    # Prefect stores link artifacts as markdown holding the link
    assert (run["out"] / "report" / "index.html").as_uri() in by_key["gcmine-report"].data
    md = by_key["gcmine-summary"].data
    assert by_key["gcmine-summary"].type == "markdown"
    assert "circle" in md and "&lt;b&gt;cross&lt;/b&gt;" in md


def test_cli_config_and_bad_settings(capsys) -> None:
    assert main(["config", "--set", "score.draws=4"]) == 0
    out = capsys.readouterr().out
    assert "draws: 4" in out and "(default: 16)" in out
    assert main(["run", "x", "--out", "y", "--set", "rank.per_image=0"]) == 2
    assert "rank.per_image" in capsys.readouterr().err


def test_cli_reports_bad_input(prefect_harness, tmp_path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,lab\na.png,x\n")
    (tmp_path / "imgs").mkdir()
    motif_dataset(n_per_label=1, size=16, labels=("circle",))[0].image.save(tmp_path / "imgs" / "a.png")
    assert main(["run", str(tmp_path / "imgs"), "--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(labels) in err and "filename" in err
