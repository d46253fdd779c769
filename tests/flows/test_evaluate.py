"""`gcmine evaluate RUN --boxes BOXES` on a finished tiny run: the maps against the motif boxes,
every box row accounted for (unknown images and labels, boxes outside the image, bad numbers),
bad box files refused with one line, and the same evaluation on an S3 run root."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.tasks.evaluate import EVALUATION_COLUMNS, recorded_maps
from gcmine.tasks.infra.artifacts import EVALUATION, EVALUATION_SUMMARY, MANIFEST, RUN_JSON, unpack_map_rows
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.synthetic import motif_dataset
from gcmodels.mining.evaluation import boxes_mask, localisation_scores

pytestmark = pytest.mark.slow

TINY = tiny_settings()


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory) -> dict:
    """A finished run on 10 images of 24 x 20 pixels (not square: maps are upsampled per axis),
    one of them corrupt, and the motif boxes as a boxes file."""
    root = tmp_path_factory.mktemp("evaluate")
    images = root / "images"
    rows = []
    for i, item in enumerate(motif_dataset(n_per_label=4, size=24, labels=("circle", "cross"), seed=7)):
        path = images / item.label / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.resize((24, 20)).save(path)
        x0, y0, x1, y1 = item.box
        rows.append(
            {
                "filename": f"{item.label}/{i:02d}.png",
                "label": item.label,
                "x0": x0,
                "y0": y0 * 20 / 24,
                "x1": x1,
                "y1": y1 * 20 / 24,
            }
        )
    (images / "circle" / "broken.png").write_bytes(b"not an image")
    out = root / "out"
    argv = ["run", str(images), "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    report = (out / "report" / "index.html").read_text()
    return {"root": root, "out": out, "boxes": pd.DataFrame(rows), "report_before": report}


def _evaluate(out, boxes_path, *extra: str) -> int:
    return main(["evaluate", str(out), "--boxes", str(boxes_path), *extra])


def test_run_json_records_the_maps(run) -> None:
    parts = recorded_maps(RunStore(str(run["out"])))["finetuned"]
    assert parts and all(p.startswith("maps/part-") for p in parts)


def test_evaluate_scores_every_box_against_its_map(run, tmp_path, capsys) -> None:
    boxes = run["boxes"]
    path = tmp_path / "boxes.csv"
    boxes.to_csv(path, index=False)
    assert _evaluate(run["out"], path) == 0
    store = RunStore(str(run["out"]))
    table = store.read_parquet(EVALUATION)
    assert list(table.columns) == EVALUATION_COLUMNS
    assert len(table) == len(boxes) and (table["status"] == "ok").all() and (table["model"] == "finetuned").all()
    # recompute one pair by hand: the map upsampled to the original 24 x 20, the box in whole pixels
    manifest = store.read_parquet(MANIFEST).set_index("image_id")
    row = table.iloc[0]
    maps = pd.concat([store.read_parquet(p) for p in store.read_json(RUN_JSON)["stages"]["score"]["maps"]])
    sel = maps[(maps["image_id"] == row["image_id"]) & (maps["label"] == row["label"])]
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.array(unpack_map_rows(sel)[0]))[None, None]
    w, h = int(manifest.loc[row["image_id"], "width"]), int(manifest.loc[row["image_id"], "height"])
    assert (w, h) == (24, 20)
    up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    b = boxes[boxes["filename"] == row["filename"]].iloc[0]
    box = [math.floor(b.x0), math.floor(b.y0), math.ceil(b.x1), math.ceil(b.y1)]
    expected = localisation_scores(up, boxes_mask(np.array([box]), h, w))
    for k, v in expected.items():
        assert row[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
    summary = store.read_parquet(EVALUATION_SUMMARY)
    assert set(summary["label"]) == {"circle", "cross", "(all)"}
    pooled = summary[summary["label"] == "(all)"].iloc[0]
    assert pooled["pairs"] == len(boxes) and pooled["ap"] == pytest.approx(table["ap"].mean())
    err = capsys.readouterr().err
    # the two-label default scores label contrast: the header says so, and how to get the paper's map
    assert "label contrast (cycled) maps against the boxes" in err and "(all)" in err
    assert "score.contrast=false" in err


def test_a_run_without_evaluation_has_no_evaluation_section(run) -> None:
    html = run["report_before"]
    assert 'id="evaluation"' not in html and "Typicality maps against the boxes" not in html
    assert 'id="summary"' in html  # the report itself is there


def test_evaluate_renders_the_report_again_with_the_numbers(run, tmp_path, capsys) -> None:
    from gcmine.tasks.report import measured_sections
    from gcmine.tasks.reporting.evaluation import POOLED

    path = tmp_path / "boxes.csv"
    run["boxes"].to_csv(path, index=False)
    run_json_before = (run["out"] / RUN_JSON).read_text()
    assert _evaluate(run["out"], path) == 0
    assert "report (with the evaluation)" in capsys.readouterr().err
    store = RunStore(str(run["out"]))
    html = (run["out"] / "report" / "index.html").read_text()
    assert '<section id="evaluation">' in html and '<a href="#evaluation">' in html
    section = html.split('<section id="evaluation">', 1)[1].split("</section>", 1)[0]
    summary = store.read_parquet(EVALUATION_SUMMARY)
    for _, r in summary.iterrows():  # every label and the pooled row, with its numbers as printed
        row = re.search(
            r"<tr[^>]*><td>finetuned</td><td>(?:<b>)?"
            + re.escape("all labels (micro-average)" if r["label"] == POOLED else r["label"])
            + r"(.*?)</tr>",
            section,
        )
        assert row, r["label"]
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]
        assert cells[:4] == [
            str(int(r["pairs"])),
            f"{100 * r['aucpr_paper']:.1f}%",
            f"{100 * r['ap']:.1f}%",
            f"{100 * r['pointing']:.1f}%",
        ]
    assert "earlier run of this root" not in section
    assert (run["out"] / RUN_JSON).read_text() == run_json_before  # run.json kept as the run wrote it
    # an evaluation of other maps than the run's current ones is flagged, not shown as current
    run_json = store.read_json(RUN_JSON)
    other = {
        **run_json,
        "stages": {
            **run_json["stages"],
            "score": {**run_json["stages"]["score"], "maps": ["maps/part-00000-other.parquet"]},
        },
    }
    ((anchor, _, stale),) = measured_sections(store, other)
    assert anchor == "evaluation" and "earlier run of this root" in stale
    ((_, _, fresh),) = measured_sections(store, run_json)
    assert "earlier run of this root" not in fresh


def test_every_box_row_is_accounted_for(run, tmp_path) -> None:
    good = run["boxes"].iloc[0].to_dict()
    rows = [
        good,
        {**good, "x0": 100, "x1": 120},  # outside the 24 x 20 image: dropped, the pair still scored with the good box
        {**good, "label": "cross" if good["label"] == "circle" else "circle"},  # a label the image was not scored under
        {**good, "label": "triangle"},  # a label the run does not have
        {**good, "filename": "ghost.png"},  # no such image
        {**good, "filename": "circle/broken.png"},  # rejected at ingest
        {**good, "filename": Path(good["filename"]).name},  # the base name alone: unique in this run
        {**good, "filename": run["boxes"].iloc[1]["filename"], "x0": "wide"},  # not a number
        {**good, "filename": run["boxes"].iloc[2]["filename"], "x1": good["x0"]},  # empty box
        {
            **good,
            "filename": run["boxes"].iloc[3]["filename"],
            "x0": -5,
            "y0": -5,
            "x1": 30,
            "y1": 30,
        },  # clipped to the image
    ]
    path = tmp_path / "boxes.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert _evaluate(run["out"], path) == 0
    t = RunStore(str(run["out"])).read_parquet(EVALUATION).set_index(["filename", "label"])
    first = t.loc[(good["filename"], good["label"])]
    assert first["status"] == "ok" and first["boxes"] == 1 and first["boxes_dropped"] == 1
    assert "outside the image (24 x 20)" in first["reason"]
    other = "cross" if good["label"] == "circle" else "circle"
    assert "no map of this image under" in t.loc[(good["filename"], other), "reason"]
    assert t.loc[(good["filename"], "triangle"), "reason"].startswith("unknown label")
    assert t.loc[("ghost.png", good["label"]), "reason"].startswith("row 6: unknown image")
    assert "rejected at ingest" in t.loc[("circle/broken.png", good["label"]), "reason"]
    assert t.loc[(Path(good["filename"]).name, good["label"]), "status"] == "ok"
    assert "is not a number" in t.loc[(run["boxes"].iloc[1]["filename"], good["label"]), "reason"]
    assert "empty box" in t.loc[(run["boxes"].iloc[2]["filename"], good["label"]), "reason"]
    clipped = t.loc[(run["boxes"].iloc[3]["filename"], good["label"])]
    assert clipped["status"] == "ok" and clipped["ap"] == 1.0 and np.isnan(clipped["outside"])  # the whole image
    assert t["boxes"].sum() + t["boxes_dropped"].sum() == len(rows)  # every row lands somewhere


@pytest.mark.parametrize(
    "content, message",
    [
        ("filename,label,x0,y0\na.png,circle,1,1\n", "lacks column(s) ['x1', 'y1']"),
        ("filename,label,x0,y0,x1,y1\n", "has no rows"),
        ("", "is empty"),
    ],
)
def test_bad_box_files_are_one_line(run, tmp_path, capsys, content: str, message: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(content)
    assert _evaluate(run["out"], path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


def test_not_a_run(tmp_path, capsys, run) -> None:
    path = tmp_path / "boxes.csv"
    run["boxes"].to_csv(path, index=False)
    assert _evaluate(tmp_path / "nothing", path) == 2
    assert "is not a finished gcmine run" in capsys.readouterr().err


def test_a_run_root_mid_update_is_refused(run, tmp_path, capsys) -> None:
    """A run that left the root mid-update (its in-progress marker, no live lease): one line, exit 1,
    nothing written."""
    from gcmine.tasks.infra.lease import IN_PROGRESS

    path = tmp_path / "boxes.csv"
    run["boxes"].to_csv(path, index=False)
    store = RunStore(run["out"])
    store.write_json(
        IN_PROGRESS, {"host": "elsewhere", "pid": 1, "flow_run_id": "r-1", "started": "2026-01-01T00:00:00Z"}
    )
    before = store.read_parquet(EVALUATION) if store.exists(EVALUATION) else None
    try:
        assert _evaluate(run["out"], path) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "left mid-update" in err[0] and "gcmine run" in err[0]
        after = store.read_parquet(EVALUATION) if store.exists(EVALUATION) else None
        assert (before is None and after is None) or before.equals(after)
    finally:
        store.remove(IN_PROGRESS)


def test_evaluation_holds_the_lease_and_publishes_the_ui_artifacts_again(run, tmp_path, monkeypatch) -> None:
    """The evaluation flow writes under the run root's lease (a `gcmine run` started meanwhile
    would wait), drops it at the end, and publishes the run's summary, elements and report link
    on its own flow run again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    import gcmine.tasks.evaluate as evaluate_task
    from gcmine.flows.evaluate import evaluate_run
    from gcmine.tasks.infra.artifacts import artifact_key
    from gcmine.tasks.infra.lease import root_state

    store = RunStore(str(run["out"]))
    seen: list[dict] = []
    summarise = evaluate_task.summarise

    def spying(table):
        seen.append(root_state(store))
        return summarise(table)

    monkeypatch.setattr(evaluate_task, "summarise", spying)
    path = tmp_path / "boxes.csv"
    run["boxes"].to_csv(path, index=False)
    state = evaluate_run(str(run["out"]), str(path), return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    assert seen and seen[0]["state"] == "updating" and seen[0]["lease"]["flow_run_id"] == str(flow_run_id)
    assert root_state(store) == {"state": "idle"}
    with get_client(sync_client=True) as client:
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        keys = {a.key for a in client.read_artifacts(flow_run_filter=flt) if a.key}
    out = str(run["out"])
    assert {artifact_key(out, "summary"), artifact_key(out, "elements"), artifact_key(out, "report")} <= keys


@pytest.fixture
def s3_endpoint(monkeypatch):
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_evaluate_on_s3(run, tmp_path, s3_endpoint) -> None:
    """The run root and the boxes file on S3 (moto): the same table as the local evaluation."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir("runs")
    fs.put(str(run["out"]) + "/", "runs/tiny/", recursive=True)
    local = tmp_path / "boxes.csv"
    run["boxes"].to_csv(local, index=False)
    fs.put(str(local), "runs/boxes.csv")
    assert _evaluate(run["out"], local) == 0
    expected = RunStore(str(run["out"])).read_parquet(EVALUATION)
    assert _evaluate("s3://runs/tiny", "s3://runs/boxes.csv", "--set", f"storage.endpoint_url={s3_endpoint}") == 0
    got = RunStore("s3://runs/tiny", {"endpoint_url": s3_endpoint}).read_parquet(EVALUATION)
    pd.testing.assert_frame_equal(got, expected)
