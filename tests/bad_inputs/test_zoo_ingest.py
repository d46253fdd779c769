"""Every messy image and label of the zoo through the ingest stage (no Prefect, no model):
each file gets its expected outcome and a precise reason, decisions are recorded."""

from __future__ import annotations

import pandas as pd
import pytest
from bad_zoo import L_HTML, L_LOST, L_PATH, L_UNI, expected_kinds, write_zoo

from gcmine.tasks.infra.artifacts import MANIFEST
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images
from gcmodels.config import DataConfig


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("zoo")
    zoo = write_zoo(root)
    store = RunStore(str(root / "out"))
    summary = ingest_images(str(zoo["images"]), str(zoo["labels"]), store, DataConfig(resolution=16))
    manifest = store.read_parquet(MANIFEST).set_index("filename")
    return {**zoo, "summary": summary, "manifest": manifest, "root": root}


def test_every_case_has_its_outcome(ingested) -> None:
    m = ingested["manifest"]
    files = [c for c in ingested["cases"] if c.name is not None]
    assert sorted(m.index) == sorted(c.name for c in files)
    for case in files:
        row = m.loc[case.name]
        if case.expect == "ok":
            assert row["status"] == "ok", (case.what, row["reason"])
            assert pd.isna(row["reason"])
            assert (row["width"], row["height"]) == case.size, case.what
        else:
            assert row["status"] == "rejected", case.what
            kind, _, detail = row["reason"].partition(":")
            assert kind == case.expect, (case.what, row["reason"])
            assert detail.strip(), f"{case.what}: the reason gives no detail: {row['reason']!r}"


def test_reasons_are_precise(ingested) -> None:
    reason = ingested["manifest"]["reason"]
    assert "HTML page" in reason["error_page.jpg"] and "text" in reason["text.png"]
    assert "900000000" in reason["bomb.png"] and "data.max_pixels" in reason["bomb.png"]
    assert "1x1" in reason["tiny_1x1.png"] and "data.min_side = 8" in reason["tiny_1x1.png"]
    assert "400x10" in reason["banner.png"] and "data.max_aspect = 10" in reason["banner.png"]
    assert "PNG" in reason["trunc.png"] and "JPEG" in reason["trunc.jpg"]
    assert reason["zz_dup_same.png"].endswith("plain_a0.png")
    # the conflicting duplicate names both labels and the decision
    other = reason["zz_dup_other.png"]
    assert "plain_b0.png" in other and repr(L_PATH) in other and repr(L_HTML) in other and "first copy" in other


def test_summary_counts_rejections_by_reason(ingested) -> None:
    s = ingested["summary"]
    assert s["rejected_by_reason"] == expected_kinds(ingested["cases"])
    assert s["rejected"] == sum(s["rejected_by_reason"].values()) == 13
    assert s["ok"] == s["images"] - 13
    assert s["missing_files"] == 1 and s["missing_examples"] == ["ghost.png"]


def test_labels_stay_data_and_decisions_are_noted(ingested) -> None:
    m, s = ingested["manifest"], ingested["summary"]
    assert s["labels"] == {L_HTML: 9, L_PATH: 9, L_UNI: 1}  # L_LOST lost all its images
    assert pd.isna(m.loc["nolabel.png", "label"]) and pd.isna(m.loc["blank_label.png", "label"])
    assert s["unlabeled"] == 2
    notes = "\n".join(s["notes"])
    assert "column 'label': empty label" in notes and "row(s) " in notes
    assert repr(L_LOST) in notes and "no usable image left" in notes
    assert repr(L_UNI) in notes and "single usable image" in notes
    assert "another label than their first copy" in notes
    assert "ghost.png" in notes and "no label" in notes


def test_nothing_written_outside_the_run_root(ingested) -> None:
    root = ingested["root"]
    outside = {p.relative_to(root).as_posix() for p in root.rglob("*") if "out" not in p.relative_to(root).parts}
    assert outside == {"images", "labels.csv"} | {f"images/{c.name}" for c in ingested["cases"] if c.name}
    # labels never become path components
    for p in (root / "out").rglob("*"):
        assert not {"x", "..", "lost", "label"} & set(p.relative_to(root / "out").parts), p
        assert "script" not in str(p) and "ünïcode" not in str(p)
