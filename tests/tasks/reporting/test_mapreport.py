"""The report's collection-at-a-glance section: escaping, the interactive threshold, sampling of
large maps, thumbnails nearest the cluster centre, noise and the conditioning decision."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from PIL import Image

import gcmine.tasks.reporting.glance as mapreport
from gcmine.tasks.reporting.glance import map_section

EVIL = '<img src=x onerror="alert(1)">'


def _points(n: int, labels=True, noise=0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cluster = np.arange(n) % 3
    cluster[:noise] = -1
    return pd.DataFrame(
        {
            "image_id": [f"id{i}" if i else EVIL for i in range(n)],
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
            "cluster": cluster,
            "label": [(EVIL if i % 2 else "cat") if labels else None for i in range(n)],
        }
    )


def _loader(image_id: str) -> Image.Image:
    if image_id == "id5":
        raise OSError("gone")
    return Image.new("RGB", (20, 10), (255, 0, 0))


def _clusters(points: pd.DataFrame) -> pd.DataFrame:
    d = np.arange(len(points), dtype=float)[::-1].copy()
    d[points["cluster"].to_numpy() < 0] = np.nan
    return pd.DataFrame({"image_id": points["image_id"], "cluster": points["cluster"], "distance": d})


def test_small_map_is_interactive_and_escaped():
    pts = _points(12, noise=2)
    html = map_section(
        pts,
        _clusters(pts),
        {
            "source": "clusters",
            "reason": "no image has a label",
            "labels": {"cluster-00": 3},
            "unlabelled": 2,
            "noise": 2,
        },
        _loader,
        interactive_max=12,
        thumbnails_per_cluster=2,
    )
    assert EVIL not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert html.count("<script>") == 1 and 'class="cmap live"' in html
    assert len(re.findall(r"<circle [^>]*data-i=", html)) == 24  # both maps
    assert len(re.findall(r'<img id="mt-\d+"', html)) == 11  # id5 failed to load: no thumbnail, no crash
    assert "Mined without labels" in html and "2 noise image(s)" in html
    assert (
        "noise (-1) (2)" in html
        and "cluster-00 (" in html
        and "unlabelled" not in html.split("Coloured by label")[1][:200]
    )
    # thumbnails: per cluster the nearest (smallest distance) first, two each, noise row last
    rows = re.findall(r'<div class="thumbrow">.*?</div></div>', html)
    assert len(rows) == 4 and "noise (-1)" in rows[-1]
    first = re.findall(r'title="([^"]+)"', rows[0])
    assert first == ["id9", "id6"]  # cluster 0 = ids 3, 6, 9 (0 is noise): largest index = smallest distance


def test_large_map_is_static_and_sampled(monkeypatch):
    monkeypatch.setattr(mapreport, "MAX_MAP_POINTS", 50)
    pts = _points(120, labels=False)
    html = map_section(pts, _clusters(pts), None, _loader, interactive_max=100, thumbnails_per_cluster=0)
    assert "<script" not in html and 'class="cmap"' in html and "data-i=" not in html
    assert len(re.findall(r"<circle ", html)) == 50 and "50 random points drawn" in html
    assert "No labels were given." in html and "thumbrow" not in html


def test_no_map_and_given_labels_decision():
    html = map_section(
        None,
        None,
        {"source": "labels", "reason": "labels were given", "labels": {"a": 1, "b": 2}, "unlabelled": 1, "noise": 0},
        _loader,
    )
    assert "No collection map." in html and "The given labels condition the model" in html and "1 unlabelled" in html
