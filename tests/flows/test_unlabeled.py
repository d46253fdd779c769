"""Mining without labels: on a folder with no labels, the clusters (HDBSCAN here, with one noise
image) become the conditioning labels of fine-tuning, typicality and ranking; noise stays
unlabelled; the decision, the cluster-stage tables and the collection map are artifacts; the
report shows the discovered groups and an interactive map."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.infra.storage import RunStore

pytestmark = pytest.mark.slow

TINY = tiny_settings(
    "data.shard_size=5",
    "cluster.method=hdbscan",
    "cluster.min_cluster_size=3",
    "cluster.min_samples=2",
    "report.map_method=tsne",
    drop=("cluster.k",),
)


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory) -> dict:
    """6 reddish and 6 bluish noise images and one checkerboard (the outlier), no labels."""
    root = tmp_path_factory.mktemp("unlabeled")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = {}
    for kind, color in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        for i in range(6):
            a = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(images / f"{kind}{i}.png")
            names[f"{kind}{i}.png"] = kind
    chk = (np.indices((24, 24)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([chk] * 3, -1)).save(images / "odd.png")
    names["odd.png"] = "odd"
    out = root / "out"
    argv = ["run", str(images), "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    return {"out": out, "store": RunStore(str(out)), "kinds": names, "images": images}


def test_clusters_condition_the_model_and_noise_is_left_out(run) -> None:
    s = run["store"]
    manifest = s.read_parquet("manifest.parquet").set_index("image_id")
    assert manifest["label"].isna().all()
    kind = manifest["filename"].map(run["kinds"])

    clusters = s.read_parquet("clusters.parquet").set_index("image_id")
    noise = clusters.index[clusters["cluster"] == -1]
    assert list(kind[noise]) == ["odd"]
    assert clusters.loc[noise, "distance"].isna().all() and clusters.drop(noise)["distance"].notna().all()
    # each discovered group is one colour
    assert clusters.drop(noise).groupby(kind)["cluster"].nunique().tolist() == [1, 1]

    cond = s.read_parquet("conditioning.parquet").set_index("image_id")
    assert list(cond.columns) == ["label", "cluster", "source"] and set(cond["source"]) == {"clusters"}
    assert cond.loc[noise, "label"].isna().all()
    assert set(cond["label"].dropna()) == {"cluster-00", "cluster-01"}
    assert (cond.drop(noise)["label"] == cond.drop(noise)["cluster"].map(lambda c: f"cluster-{c:02d}")).all()

    model_labels = json.loads((run["out"] / "model" / "gcmine_model.json").read_text())["labels"]
    assert model_labels == ["cluster-00", "cluster-01"]
    trained_on = s.read_parquet("model/training_set.parquet").set_index("image_id")
    assert noise[0] not in trained_on.index and len(trained_on) == 12

    typ = s.read_parquet("typicality.parquet").set_index("image_id")
    assert noise[0] not in typ.index and len(typ) == 12
    assert (typ["label"] == cond.loc[typ.index, "label"]).all()
    assert set(s.read_parquet("elements.parquet")["label"]) == {"cluster-00", "cluster-01"}
    assert noise[0] not in set(s.read_parquet("patches.parquet")["image_id"])

    info = json.loads((run["out"] / "run.json").read_text())
    decision = info["stages"]["condition"]
    assert decision["source"] == "clusters" and decision["mode"] == "auto" and decision["noise"] == 1
    assert decision["labels"] == {"cluster-00": 6, "cluster-01": 6}
    assert info["summary"]["conditioning"].startswith("clusters")


def test_cluster_stage_tables_and_map(run) -> None:
    s = run["store"]
    n = 13
    assert list(s.read_parquet("cluster_traces.parquet").columns) == ["trace", "iteration", "value"]
    assert s.read_parquet("cluster_contingency.parquet").empty  # no labels given
    assert list(s.read_parquet("cluster_linkage.parquet").columns) == ["child_a", "child_b", "distance", "size"]
    points = s.read_parquet("collection_map.parquet")
    assert list(points.columns) == ["image_id", "x", "y", "cluster"] and len(points) == n
    assert np.isfinite(points[["x", "y"]].to_numpy()).all() and points[["x", "y"]].std().min() > 0
    clusters = s.read_parquet("clusters.parquet").set_index("image_id")
    assert (points.set_index("image_id")["cluster"] == clusters.loc[points["image_id"], "cluster"].to_numpy()).all()


def test_report_shows_the_groups_and_an_interactive_map(run) -> None:
    html = (run["out"] / "report" / "index.html").read_text()
    assert "<h2>cluster-00</h2>" in html and "<h2>cluster-01</h2>" in html
    assert "Mined without labels" in html and "noise (-1)" in html
    assert 'class="cmap live"' in html and len(re.findall(r"<circle ", html)) == 13
    assert len(re.findall(r'<img id="mt-\d+"', html)) == 13
    assert html.count("<script") == 1 and "<script src" not in html and 'src="http' not in html
    assert "No labels were given." in html


def test_given_labels_required_but_none_is_a_clear_error(run, tmp_path, capsys) -> None:
    argv = ["run", str(run["images"]), "--out", str(tmp_path / "o"), "--set", "data.labels=given"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data.labels='given' but no image has a label" in err and "'clusters'" in err
