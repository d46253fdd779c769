"""The whole flow, through the CLI, over the messy zoo folder: it finishes, the summary and the
report count rejections by reason, labels stay data (escaped, never paths), and datasets too
small for a stage fail with a clear message."""

from __future__ import annotations

import contextlib
import html as htmllib
import io
import re

import pandas as pd
import pytest
from bad_zoo import L_HTML, L_LOST, L_PATH, L_UNI, expected_kinds, write_zoo
from tiny import tiny_settings

from gcmine.flows.cli import main

pytestmark = pytest.mark.slow

TINY = tiny_settings("data.shard_size=8", "cluster.k=50", "rank.elements=3")


def _argv(images, out, labels=None, extra=()) -> list[str]:
    argv = ["run", str(images), "--out", str(out)] + (["--labels", str(labels)] if labels else [])
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    return argv


def _snapshot(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def messy(prefect_harness, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("messy")
    zoo = write_zoo(root / "data")
    cwd = root / "cwd"
    cwd.mkdir()
    before = _snapshot(root)
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)  # a relative write anywhere would land here
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(_argv(zoo["images"], root / "out", zoo["labels"]))
    mp.undo()
    return {**zoo, "root": root, "out": root / "out", "rc": rc, "stderr": err.getvalue(), "before": before}


def test_the_run_finishes(messy) -> None:
    assert messy["rc"] == 0, messy["stderr"][-3000:]
    assert (messy["out"] / "report" / "index.html").exists()


def test_cli_summary_counts_rejections_by_reason(messy) -> None:
    err = messy["stderr"]
    kinds = expected_kinds(messy["cases"])
    assert f"({sum(1 for c in messy['cases'] if c.name) - 13} ok, 13 rejected)" in err
    block = err.split("rejected by reason", 1)[1]
    for kind, count in kinds.items():
        assert re.search(rf"^\s+{count}\s+{re.escape(kind)}$", block, re.M), (kind, count, block[:800])
    assert "note: " in err and repr(L_LOST) in err and "ghost.png" in err


def test_report_counts_rejections_by_reason_and_escapes_everything(messy) -> None:
    page = (messy["out"] / "report" / "index.html").read_text()
    section = page.split("Rejections by reason", 1)[1].split("</table>", 1)[0]
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", section))
    assert {htmllib.unescape(k): int(v) for k, v in rows.items()} == expected_kinds(messy["cases"])
    # The only script is the collection map's fixed hover script; nothing from the data is markup.
    assert page.lower().count("<script") == 1 and "<script>alert" not in page.lower()
    assert "<img src=x" not in page and "<b>code" not in page
    assert htmllib.escape(L_HTML) in page or htmllib.escape(L_HTML, quote=False) in page
    assert "Input warnings and decisions" in page
    # every rejected file is listed with its reason
    for case in messy["cases"]:
        if case.name and case.expect != "ok":
            assert htmllib.escape(case.name) in page, case.name


def test_results_hold_the_usable_images_and_labels(messy) -> None:
    m = pd.read_parquet(messy["out"] / "manifest.parquet")
    assert (m["status"] == "rejected").sum() == 13
    typ = pd.read_parquet(messy["out"] / "typicality.parquet")
    assert set(typ["label"]) == {L_HTML, L_PATH, L_UNI}
    elements = pd.read_parquet(messy["out"] / "elements.parquet")
    assert set(elements["label"]) == {L_HTML, L_PATH, L_UNI}
    assert len(elements[elements["label"] == L_UNI]) <= 2  # one image, 2 patches: elements clipped
    metrics = pd.read_parquet(messy["out"] / "cluster_metrics.parquet").set_index("metric")["value"]
    assert metrics["k"] <= (m["status"] == "ok").sum() < 50  # cluster.k=50 clipped to the images


def test_nothing_written_outside_the_run_root(messy) -> None:
    root = messy["root"]
    after = {k: v for k, v in _snapshot(root).items() if not k.startswith("out/")}
    assert after == messy["before"]
    for p in messy["out"].rglob("*"):
        parts = set(p.relative_to(messy["out"]).parts)
        assert not {"x", "..", "lost", "label"} & parts, p
        assert "script" not in str(p) and "ünïcode" not in str(p) and "☕" not in str(p), p


def test_too_few_images_for_the_clusterer_is_a_clear_error(prefect_harness, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    zoo = write_zoo(tmp_path / "z")
    for case in zoo["cases"][:3]:  # three usable images, two labels
        (folder / ("a" if "a" in case.name else "b")).mkdir(parents=True, exist_ok=True)
        (folder / ("a" if "a" in case.name else "b") / case.name).write_bytes(case.data)
    rc = main(_argv(folder, tmp_path / "out", extra=["cluster.method=hdbscan", "cluster.k=null"]))
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "cluster.method=hdbscan needs at least cluster.min_samples = 5" in err and "this run has 3" in err
    assert "Traceback" not in err
