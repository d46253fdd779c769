"""The Prefect UI's view of a run: keys with the dataset name, pictures of the top elements, a
report link a browser follows (the flow tests check them on real runs, in a real browser)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image

from gcmine.tasks.infra.artifacts import artifact_key, dataset_name
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.reporting.uiartifacts import THUMB, element_strips, report_link, served_path, summary_markdown
from gcmodels.config import ReportConfig


def test_keys_and_names_carry_the_dataset() -> None:
    assert dataset_name("s3://bucket/runs/cars/") == "cars"
    assert artifact_key("s3://bucket/runs/Cars_2024", "summary") == "gcmine-cars-2024-summary"
    assert artifact_key("/data/runs/Été photos", "score-part-00001") == "gcmine-ete-photos-score-part-00001"
    assert artifact_key("/data/runs/" + "x" * 80, "summary") == "gcmine-" + "x" * 40 + "-summary"
    assert artifact_key("/", "summary") == "gcmine-run-summary"
    assert served_path("/data/runs/Cars 2") == "/cars-2/"


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    elements = pd.DataFrame(
        {
            "label": ["a", "a", "b|<i>"],
            "element": [0, 1, 0],
            "rank": [1, 0, 0],
            "score": [0.5, 0.7, 0.2],
            "size": [3, 2, 1],
        }
    )
    patches = pd.DataFrame(
        {
            "image_id": ["i0", "i1", "i0", "i1", "i0", "i1"],
            "label": ["a", "a", "a", "a", "a", "b|<i>"],
            "rank": 0,
            "x0": [0, 4, 8, 0, 2, 10],
            "y0": [0, 4, 8, 10, 2, 0],
            "x1": [6, 10, 14, 6, 8, 16],
            "y1": [6, 10, 14, 16, 8, 6],
            "typicality": [0.9, 0.8, 0.1, 0.7, 0.6, 0.5],
            "element": [0, 0, 0, 1, 1, 0],
        }
    )
    return elements, patches


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def test_strips_picture_each_top_element_within_the_budget() -> None:
    elements, patches = _tables()
    images = {"i0": _image(0), "i1": _image(1)}
    strips = element_strips(elements, patches, images.get, ["a", "b|<i>"], per_element=2)
    assert set(strips) == {("a", 0), ("a", 1), ("b|<i>", 0)}
    strip = Image.open(io.BytesIO(base64.b64decode(strips[("a", 0)].split(",", 1)[1])))
    assert strip.height == THUMB and strip.width > 2 * THUMB  # 2 patches with context, side by side
    one = Image.open(io.BytesIO(base64.b64decode(strips[("b|<i>", 0)].split(",", 1)[1])))
    assert one.height == THUMB and one.width < 2 * THUMB
    # an unreadable image is left out; past the budget, the labels that follow get no picture
    assert set(element_strips(elements, patches, {"i0": _image(0)}.get, ["a", "b|<i>"])) == {("a", 0), ("a", 1)}
    first = len(strips[("a", 1)])
    assert set(element_strips(elements, patches, images.get, ["a", "b|<i>"], per_element=2, budget=first + 10)) == {
        ("a", 1)
    }


def test_summary_markdown_escapes_and_links() -> None:
    elements, _ = _tables()
    link = {"url": "http://127.0.0.1:8765/cars/", "note": "start `gcmine serve /data/runs/cars`"}
    md = summary_markdown("/data/runs/cars", elements, {("a", 1): "data:image/png;base64,AAAA"}, link, ["a", "b|<i>"])
    assert md.startswith("# gcmine: what is typical of each label in cars\n")
    assert (
        "**[Open the full report of cars](http://127.0.0.1:8765/cars/)** (start `gcmine serve /data/runs/cars`)" in md
    )
    rows = [line for line in md.splitlines() if line.startswith("| [")]
    assert rows == [
        "| [a](http://127.0.0.1:8765/cars/#label-0-a) | 0 | 0.7 | 2 | ![a, element 0](data:image/png;base64,AAAA) |",
        "| [a](http://127.0.0.1:8765/cars/#label-0-a) | 1 | 0.5 | 3 |  |",
        "| [b\\|&lt;i&gt;](http://127.0.0.1:8765/cars/#label-1-b-i) | 0 | 0.2 | 1 |  |",
    ]
    assert "Pictures of 1 more label(s) are in the report" in md


def test_report_link_local_and_without_presigning(tmp_path) -> None:
    local = report_link(RunStore(str(tmp_path / "cars")), ReportConfig(serve_port=9001))
    assert local["url"] == "http://127.0.0.1:9001/cars/"
    assert f"gcmine serve {tmp_path / 'cars'}" in local["note"] and "ssh -L 9001:127.0.0.1:9001" in local["note"]
    remote = report_link(RunStore("s3://bucket/runs/cars", {"key": "k", "secret": "s"}), ReportConfig(link_hours=0))
    assert remote["url"] == "http://127.0.0.1:8765/cars/" and "gcmine serve s3://bucket/runs/cars" in remote["note"]
