"""The whole DAG on a tiny dataset, in the session's Prefect harness, checked against the
artifact contract of DESIGN.md."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import MANIFEST_COLUMNS, unpack_maps
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

TINY = tiny_settings("data.shard_size=5", "runtime.threads=1")
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


def _run_cli(dataset: dict, out: Path, *extra: str) -> None:
    argv = ["run", str(dataset["images"]), "--labels", str(dataset["labels"]), "--out", str(out)]
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def run(prefect_harness, dataset, tmp_path_factory) -> dict:
    """The run of the dataset into run root `.../cars` (a free port for `gcmine serve`)."""
    out = tmp_path_factory.mktemp("run") / "cars"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _run_cli(dataset, out, f"report.serve_port={port}")
    return {"out": out, "store": RunStore(str(out)), "port": port, "link": f"http://127.0.0.1:{port}/cars/"}


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
    traces = s.read_parquet("cluster_traces.parquet")
    inertia = traces[traces["trace"] == "inertia"].sort_values("iteration")["value"].to_numpy()
    assert len(inertia) >= 1 and (np.diff(inertia) <= 1e-9 * inertia[0]).all()
    assert metrics["inertia_final"] == pytest.approx(inertia[-1])
    ct = s.read_parquet("cluster_contingency.parquet")
    assert list(ct.columns) == ["label", "cluster", "count"] and set(ct["label"]) == set(LABELS)
    assert ct["count"].sum() == ok["label"].notna().sum()
    assert s.read_parquet("cluster_linkage.parquet").empty  # k-means: no merge tree
    cond = s.read_parquet("conditioning.parquet").set_index("image_id")
    assert (
        set(cond["source"]) == {"labels"}
        and (cond["label"].fillna("") == ok["label"].reindex(cond.index).fillna("")).all()
    )
    points = s.read_parquet("collection_map.parquet")
    assert sorted(points["image_id"]) == sorted(ok.index) and np.isfinite(points[["x", "y"]].to_numpy()).all()

    training = s.read_parquet("training.parquet")
    assert list(training.columns) == ["step", "loss", "lr", "seconds"] and list(training["step"]) == [0, 1, 2]

    typ = s.read_parquet("typicality.parquet")
    assert list(typ.columns) == [
        "image_id",
        "label",
        "image_label",
        "typicality",
        "draws",
        "typicality_se",
        "top_patch_se",
    ]
    assert (typ["draws"] == 2).all() and (typ["typicality_se"] >= 0).all() and typ["top_patch_se"].isna().all()
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
    assert (patches["draws"] == 2).all() and patches["top_patch_se"].isna().all()
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
    assert list(elements.columns) == [
        "label",
        "element",
        "rank",
        "score",
        "size",
        "score_lo",
        "score_hi",
        "draws",
        "patch_se",
        "specificity",
        "shared",
    ]
    assert (elements["score_lo"] <= elements["score"]).all() and (elements["score"] <= elements["score_hi"]).all()
    assert (elements["draws"] == 2).all() and elements["patch_se"].isna().all()  # plain scoring, N = 2
    assert elements["specificity"].between(0, 1).all() and elements["shared"].dtype == bool
    for label, g in elements.groupby("label"):
        ranked = g.sort_values("rank")
        assert list(ranked["rank"]) == list(range(len(g)))
        assert ranked["score"].is_monotonic_decreasing  # rank.shared_elements=keep: the paper's order
        members = patches[(patches["label"] == label) & (patches["element"] >= 0)]
        assert (
            g.set_index("element")["size"].sort_index().tolist()
            == members["element"].value_counts().sort_index().tolist()
        )
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


def test_samples_beside_real_images(run) -> None:
    """report.samples (default 8) samples per label of the run's model, their Frechet distance to
    the label's real images on the embed encoder's features, shown in the report; an earlier
    model's samples are not shown as this run's."""
    from gcmine.tasks.report import measured_sections
    from gcmine.tasks.samples import QUALITY_COLUMNS, SAMPLE_COLUMNS

    s = run["store"]
    info = s.read_json("run.json")
    fingerprint = info["stages"]["finetune"]["fingerprint"]
    table = s.read_parquet("samples.parquet")
    assert list(table.columns) == SAMPLE_COLUMNS and len(table) == 8 * len(LABELS)
    assert sorted(table["label"].unique()) == sorted(LABELS) and (table["fingerprint"] == fingerprint).all()
    assert (table["steps"] == 25).all() and set(table["nearest_label"]) <= set(LABELS)
    from PIL import Image

    first = Image.open(io.BytesIO(table["png"].iloc[0]))
    assert first.size == (16, 16) and first.mode == "RGB"
    quality = s.read_parquet("sample_quality.parquet").set_index("label")
    assert list(quality.reset_index().columns) == QUALITY_COLUMNS and set(quality.index) == {*LABELS, "(all)"}
    assert (quality["features"] == "pixel-pca").all() and (quality["frechet"] > 0).all()
    assert quality.loc["(all)", "samples"] == 16 and quality.loc["(all)", "real_images"] == 12
    assert quality.loc["(all)", "nearest_label_share"] == pytest.approx(
        (table["nearest_label"] == table["label"]).mean()
    )
    assert "samples" in info["timings"]
    report = (run["out"] / "report" / "index.html").read_text()
    section = report.split('<section id="samples">', 1)[1].split("</section>", 1)[0]
    assert "Frechet distance on pixel-pca features" in section and section.count('class="crop"') == 16 + 12
    assert f"{quality.loc['(all)', 'frechet']:.4g}" in section
    other = {**info, "stages": {**info["stages"], "finetune": {**info["stages"]["finetune"], "fingerprint": "0" * 16}}}
    assert [a for a, _, _ in measured_sections(s, other, lambda i: None)] == []
    assert [a for a, _, _ in measured_sections(s, info, lambda i: None)] == ["samples"]


def test_diffusion_embedding_runs_after_finetune(prefect_harness, dataset, tmp_path) -> None:
    """embed.method=diffusion: the flow fine-tunes first, then embeds with that model's decoder
    features; everything downstream (clusters, scores) uses the same single model."""
    out = tmp_path / "out"
    _run_cli(dataset, out, "embed.method=diffusion", "embed.diffusion_grid=2", "embed.diffusion_draws=1")
    store = RunStore(str(out))
    info = json.loads((out / "run.json").read_text())
    encoder = info["stages"]["embed"]["encoder"]
    assert encoder["encoder"] == "diffusion-features" and encoder["grid"] == 2
    emb = store.read_parquet("embeddings.parquet")
    vectors = np.stack(emb["embedding"].to_numpy())
    assert vectors.shape == (dataset["n_ok"], encoder["dim"]) and np.isfinite(vectors).all()
    assert vectors.std(0).max() > 0  # the images are told apart
    assert len(store.read_parquet("clusters.parquet")) == dataset["n_ok"]
    assert info["stages"]["finetune"]["reused"] is False and list(store.read_parquet("training.parquet")["step"]) == [
        0,
        1,
        2,
    ]
    # mapped over the shards (one embed task run each, gathered in shard order), with the same
    # vectors as the encoder on all images in one go (up to float rounding of other batch sizes)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from gcmine.tasks.infra.artifacts import read_images
    from gcmodels.config import EmbedConfig
    from gcmodels.diffusion import PixelDiffusion
    from gcmodels.embedding.encoders import make_encoder

    shards = sorted(p.name for p in (out / "images").glob("part-*.parquet"))
    assert len(shards) == 3 and info["stages"]["embed"]["workers"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[info["flow_run_id"]])))
    embed_runs = sorted(r.name for r in runs if r.name.startswith("embed"))
    assert embed_runs == [f"embed[{s}]" for s in shards] + ["embeddings-table"]  # no global embed task
    meta, pixels = read_images(store, shards)
    model = PixelDiffusion.load(out / "model").eval()
    config = EmbedConfig(**info["config"]["embed"])
    assert (config.method, config.diffusion_grid, config.diffusion_draws) == ("diffusion", 2, 1)
    whole = make_encoder(config, diffusion=model).fit().transform(pixels)
    assert list(emb["image_id"]) == list(meta["image_id"])
    np.testing.assert_allclose(vectors, whole, rtol=1e-5, atol=1e-6)
    # a rerun reuses every shard's embeddings
    _run_cli(dataset, out, "embed.method=diffusion", "embed.diffusion_grid=2", "embed.diffusion_draws=1")
    again = json.loads((out / "run.json").read_text())
    assert {f"embed[{s}]" for s in shards} <= set(again["reused"])
    pd.testing.assert_frame_equal(store.read_parquet("embeddings.parquet"), emb)


def test_report_is_self_contained_and_escaped(run) -> None:
    html = (run["out"] / "report" / "index.html").read_text()
    assert "<b>cross</b>" not in html and "&lt;b&gt;cross&lt;/b&gt;" in html
    assert "data:image/png;base64," in html
    assert 'src="http' not in html and "<script src" not in html
    assert html.count("<script") == 1  # the fixed hover script of the collection map, nothing from the data
    assert "Coloured by label" in html and "&lt;b&gt;cross&lt;/b&gt; (" in html  # map legend, escaped


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
    assert {"ingest", "embed", "cluster", "finetune", "typicality-table", "elements", "publish", "report"} <= names
    shards = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert {f"score[{s}]" for s in shards} <= names and {f"rank[{s}]" for s in shards} <= names
    by_key = {a.key: a for a in artifacts if a.key}
    # keys carry the dataset (run root) name: one entry per dataset on the Artifacts page
    assert {
        "gcmine-cars-summary",
        "gcmine-cars-elements",
        "gcmine-cars-report",
        "gcmine-cars-finetune-progress",
    } <= set(by_key)
    assert (
        by_key["gcmine-cars-finetune-progress"].type == "progress"
        and float(by_key["gcmine-cars-finetune-progress"].data) == 100.0
    )
    assert by_key["gcmine-cars-elements"].type == "table"
    assert "NaN" not in str(by_key["gcmine-cars-elements"].data)  # patch_se of plain scoring: empty, not NaN
    # the summary, table and link hang off the flow run itself, not a task run; titles name the dataset
    for what in ("summary", "elements", "report"):
        artifact = by_key[f"gcmine-cars-{what}"]
        assert artifact.task_run_id is None and str(artifact.flow_run_id) == run_id, what
        assert artifact.description.startswith("cars: "), artifact.description
    # Prefect stores link artifacts as markdown holding the link: http, to `gcmine serve`
    assert run["link"] in by_key["gcmine-cars-report"].data
    md = by_key["gcmine-cars-summary"].data
    assert by_key["gcmine-cars-summary"].type == "markdown"
    assert md.startswith("# gcmine: what is typical of each label in cars")
    assert "circle" in md and "&lt;b&gt;cross&lt;/b&gt;" in md
    # progress artifacts of every score shard, finished
    for s in shards:
        key = "gcmine-cars-score-" + s.removesuffix(".parquet")
        assert by_key[key].type == "progress" and float(by_key[key].data) == 100.0, key
    # the summary: a table row per top element with its score and pictures, and the link to the report
    elements = run["store"].read_parquet("elements.parquet")
    assert f"**[Open the full report of cars]({run['link']})** (start `gcmine serve {run['out']}`" in md
    assert "| label | element rank | score | patches | most typical patches |" in md
    for _, e in elements[elements["rank"] < 3].iterrows():
        assert f" | {int(e['rank'])} | {e['score']:.4g} | {int(e['size'])} | ![" in md
    pictures = re.findall(r"!\[([^\]]*)\]\((data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+)\)", md)
    assert len(pictures) == (elements["rank"] < 3).sum(), [p[0] for p in pictures]
    for _, uri in pictures:  # each a real picture: a strip of patches THUMB pixels high
        from PIL import Image

        from gcmine.tasks.reporting.uiartifacts import THUMB

        strip = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert strip.height == THUMB and strip.width >= THUMB
    report = (run["out"] / "report" / "index.html").read_text()
    for label in LABELS:  # each row's label links to its section of the report
        anchor = next(
            a
            for a in re.findall(r'<section class="label" id="([^"]+)"><h2>([^<]*)', report)
            if html.unescape(a[1]) == label
        )[0]
        text = label.replace("<", "&lt;").replace(">", "&gt;")
        assert f"| [{text}]({run['link']}#{anchor}) | " in md
    # the table artifact holds every element with its score
    table = pd.DataFrame(json.loads(by_key["gcmine-cars-elements"].data))
    assert len(table) == len(elements)
    merged = table.merge(elements, on=["label", "element"], suffixes=("", "_file"))
    assert len(merged) == len(elements)
    np.testing.assert_allclose(merged["score"], merged["score_file"], rtol=1e-5)
    assert (merged["rank"] == merged["rank_file"]).all()
    # the run's parameters are visible (settings as values)
    assert flow_run.parameters["settings"]["train"]["steps"] == 3
    assert flow_run.parameters["images"].endswith("images")


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
    # the UI shows the same clear message on the failed task run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        failed = [
            r
            for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["mine-imgs"])))
            if r.parameters.get("out") == str(tmp_path / "o")
        ]
        assert len(failed) == 1 and failed[0].state.is_failed()
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [failed[0].id]}))
    bad = [t for t in tasks if t.state.is_failed()]
    assert len(bad) == 1 and bad[0].name.startswith("ingest"), [t.name for t in tasks]
    assert str(labels) in bad[0].state.message and "filename" in bad[0].state.message, bad[0].state.message


# Columns that record when or how long, not what: they differ between any two runs.
TIMING_COLUMNS = {"manifest.parquet": ["first_seen"], "training.parquet": ["seconds"]}


def test_one_dask_worker_per_gpu_gives_the_same_artifacts(run, dataset, tmp_path, monkeypatch) -> None:
    """runtime.gpus=2 on a node with two "GPUs" (the count this process sees, patched; the workers
    compute on the CPU, where runtime.device=auto resolves): a local Dask cluster of 2 worker
    processes, each pinned to its own card (CUDA_VISIBLE_DEVICES), writes the same Parquet files,
    with the same contents, as the thread runner; score and rank shards ran on both workers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from gcmine.flows import runners

    monkeypatch.setattr(runners, "cuda_device_count", lambda: 2)
    out = tmp_path / "dask"
    _run_cli(dataset, out, "runtime.gpus=2")
    files = sorted(
        p.relative_to(run["out"]).as_posix() for p in run["out"].rglob("*.parquet") if ".cache" not in p.parts
    )
    assert files == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet") if ".cache" not in p.parts)
    assert any(f.startswith("maps/") for f in files) and any(f.startswith("patch_candidates/") for f in files)
    for name in files:
        a, b = pd.read_parquet(run["out"] / name), pd.read_parquet(out / name)
        skip = TIMING_COLUMNS.get(name, [])
        pd.testing.assert_frame_equal(a.drop(columns=skip), b.drop(columns=skip), check_exact=True, obj=name)
    run_id = json.loads((out / "run.json").read_text())["flow_run_id"]
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=flt)
        progress = {a.key: a for a in client.read_artifacts(flow_run_filter=flt) if a.type == "progress"}
    shard_runs = [t for t in tasks if t.name.startswith(("score[", "rank["))]
    assert len(shard_runs) == 6 and all(t.state.is_completed() for t in shard_runs)
    # the workers reported their progress to the same API
    assert {f"gcmine-dask-score-part-0000{i}" for i in range(3)} <= set(progress), sorted(progress)
    assert all(float(progress[f"gcmine-dask-score-part-0000{i}"].data) == 100.0 for i in range(3))
    # the shards ran in the Dask worker processes, not in this one (where the thread runner ran them)
    here = f"{socket.gethostname()}:{os.getpid()}"
    for stage in ("score", "rank"):
        threads = json.loads((run["out"] / "run.json").read_text())["stages"][stage]["workers"]
        dask = json.loads((out / "run.json").read_text())["stages"][stage]["workers"]
        assert threads == [here] and dask and here not in dask, (stage, threads, dask)
        # each worker process saw its own card: two processes, "gpu 0" and "gpu 1" (3 shards over 2 workers)
        assert sorted(w.split(" gpu ")[1] for w in dask) == ["0", "1"], (stage, dask)
        assert len({w.split(" ")[0] for w in dask}) == 2, dask


def test_prefect_ui_in_a_real_browser(run, tmp_path) -> None:
    """Headless Chromium opens the Prefect UI page of the finished run and its artifacts (a
    server with the UI, on the harness's database), sees the run's name, state and artifacts, the
    summary's pictures of each label's top elements rendered, and follows its report link to the
    report that `gcmine serve` answers; screenshots under the test's tmp folder."""
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from uibrowser import chromium_page, chromium_path, prefect_ui_server

    from gcmine.flows.serve import report_server
    from gcmine.tasks.reporting.uiartifacts import THUMB

    binary = chromium_path()
    if binary is None:
        if os.environ.get("GCMINE_REQUIRE_BROWSER"):
            pytest.fail("GCMINE_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium); .ci/run installs it")
    run_id = json.loads((run["out"] / "run.json").read_text())["flow_run_id"]
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(run_id).name
        key = ArtifactFilter(key=ArtifactFilterKey(any_=["gcmine-cars-summary"]))
        summary = client.read_artifacts(flow_run_filter=flt, artifact_filter=key)[0]
    pictures = summary.data.count("](data:image/")
    database = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    database = database.get_secret_value() if hasattr(database, "get_secret_value") else str(database)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    served = report_server(str(run["out"]), run["port"])  # `gcmine serve RUN` with the run's report.serve_port
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        with (
            prefect_ui_server(database, tmp_path / "ui-server") as ui,
            chromium_page(binary, tmp_path / "chromium") as page,
        ):
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.wait_text(name, "Completed", "Artifacts")
            assert page.js("document.title") == f"Flow Run: {name} • Prefect Server"
            page.screenshot(shots / "flow-run.png")

            page.click_text(".p-tab", "Task Runs")  # readable names per stage and shard
            page.wait_text("score[part-00000.parquet]", "rank[part-00002.parquet]", "finetune", "report")
            page.screenshot(shots / "flow-run-tasks.png")

            page.click_text(".p-tab", "Artifacts")
            page.wait_text(
                name,
                "Flow run",
                "gcmine-cars-summary",
                "gcmine-cars-elements",
                "gcmine-cars-report",
                "cars: top visual elements per label",
            )
            page.screenshot(shots / "flow-run-artifacts.png")
            # the task runs' progress artifacts come below, loaded once scrolled into view
            page.wait_text("Task runs", "gcmine-cars-finetune-progress", "gcmine-cars-score-part-00000", scroll=True)

            page.goto(f"{ui}/artifacts/artifact/{summary.id}")
            text = page.wait_text("gcmine-cars-summary", "what is typical of each label in cars", name)
            assert "element rank" in text and "Open the full report of cars" in text  # the markdown table, rendered
            # every element's picture is in the page, decoded: THUMB pixels high, as wide as its patches
            shown = "[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/'))"
            deadline = time.monotonic() + 30
            while page.js(f"{shown}.filter(i => i.complete && i.naturalHeight === {THUMB}).length") < pictures:
                assert time.monotonic() < deadline, page.js(
                    f"{shown}.map(i => [i.alt, i.naturalWidth, i.naturalHeight])"
                )
                time.sleep(0.5)
            assert pictures >= 4 and page.js(f"{shown}.every(i => i.getBoundingClientRect().height >= 40)")
            page.screenshot(shots / "summary-artifact.png")

            # the report link leads to the report (http, served by `gcmine serve`; a file:// link would not open)
            href = page.js(
                "[...document.querySelectorAll('a')].find(a => a.innerText.includes('Open the full report')).href"
            )
            assert href == run["link"]
            page.goto(href)
            text = page.wait_text("gcmine report", "circle")
            assert page.js("location.href") == run["link"]
            page.screenshot(shots / "report-from-ui.png")
    finally:
        served.shutdown()
        served.server_close()
    for png in shots.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png


def test_adaptive_scoring_runs_in_the_flow(run, dataset, tmp_path) -> None:
    """score.adaptive: the flow scores by successive elimination against rank's top patches; every
    label's best image is refined to N draws, the precision columns are filled, and an image
    scored to N gets the map of plain scoring at N (the same draws, summed in the same order)."""
    n = 4
    plain, adaptive = tmp_path / "plain", tmp_path / "adaptive"
    _run_cli(dataset, plain, f"score.draws={n}", "score.contrast=false")  # adaptive scores typicality maps
    _run_cli(dataset, adaptive, f"score.draws={n}", "score.adaptive=true", "score.adaptive_first=2", "rank.per_label=1")
    typ = pd.read_parquet(adaptive / "typicality.parquet").set_index("image_id")
    assert set(typ["draws"]) <= {2, n} and (typ.groupby("label")["draws"].max() == n).all()
    assert np.isfinite(typ["typicality_se"]).all() and np.isfinite(typ["top_patch_se"]).all()

    def maps(out: Path) -> pd.DataFrame:
        frame = pd.concat([pd.read_parquet(p) for p in sorted((out / "maps").glob("part-*.parquet"))])
        return pd.DataFrame({"map": list(unpack_maps(frame))}, index=frame["image_id"])

    full = typ.index[typ["draws"] == n]
    a, p = maps(adaptive).loc[full, "map"], maps(plain).loc[full, "map"]
    assert all(np.array_equal(x, y) for x, y in zip(a, p))
    patches = pd.read_parquet(adaptive / "patches.parquet")
    assert len(patches) > 0 and (patches["draws"].to_numpy() == typ.loc[patches["image_id"], "draws"].to_numpy()).all()
    np.testing.assert_array_equal(
        patches["top_patch_se"].to_numpy(), typ.loc[patches["image_id"], "top_patch_se"].to_numpy()
    )
    # the decision rule (score.adaptive_rule=decision) through the flow: the same draws, the images
    # it does not settle get plain scoring's maps
    decision = tmp_path / "decision"
    _run_cli(
        dataset,
        decision,
        f"score.draws={n}",
        "score.adaptive=true",
        "score.adaptive_first=2",
        "score.adaptive_rule=decision",
        "score.adaptive_z=0.5",
    )
    typ = pd.read_parquet(decision / "typicality.parquet").set_index("image_id")
    assert set(typ["draws"]) <= {2, n}
    full = typ.index[typ["draws"] == n]
    assert all(np.array_equal(x, y) for x, y in zip(maps(decision).loc[full, "map"], maps(plain).loc[full, "map"]))
