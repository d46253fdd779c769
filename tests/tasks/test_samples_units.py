"""The samples stage's pure parts: the quality table (Frechet distance per label and overall,
nearest-label share) and the report's samples section."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmodels.frechet import frechet_distance_between
from tasks.reporting import samples_section
from tasks.samples import ALL, quality_table

EVIL = "<script>alert(1)</script>"


def test_quality_table_by_hand() -> None:
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(10, 1, (20, 3))])
    real_labels = np.array(["a"] * 20 + ["b"] * 20, dtype=object)
    # a's samples look like a's images; b's samples: two like b, one like a
    gen = np.concatenate([rng.normal(0, 1, (3, 3)), rng.normal(10, 1, (2, 3)), rng.normal(0, 1, (1, 3))])
    gen_labels = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    q, nearest, dist = quality_table(gen_labels, gen, real_labels, real)
    assert q["label"].tolist() == ["a", "b", ALL]
    assert q["samples"].tolist() == [3, 3, 6] and q["real_images"].tolist() == [20, 20, 40]
    assert q["nearest_label_share"].tolist() == pytest.approx([1.0, 2 / 3, 5 / 6])
    assert q.loc[0, "frechet"] == pytest.approx(frechet_distance_between(real[:20], gen[:3]))
    assert q.loc[2, "frechet"] == pytest.approx(frechet_distance_between(real, gen))
    assert q.loc[1, "frechet"] > q.loc[0, "frechet"]  # b's samples are further from b's images
    assert (real_labels[nearest] == ["a", "a", "a", "b", "b", "a"]).all()
    assert dist == pytest.approx(np.linalg.norm(gen - real[nearest], axis=1))


def test_quality_table_with_a_single_sample_has_no_distance() -> None:
    q, _, _ = quality_table(np.array(["a"], dtype=object), np.zeros((1, 2)), np.array(["a", "a"], dtype=object), np.eye(2))
    assert np.isnan(q.loc[0, "frechet"]) and q.loc[0, "nearest_label_share"] == 1.0


def _png(color: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_samples_section_shows_samples_real_images_and_numbers() -> None:
    quality = pd.DataFrame({
        "label": ["cat", EVIL, ALL], "samples": [2, 2, 4], "real_images": [5, 6, 11], "frechet": [1.25, 3.5, 2.0],
        "nearest_label_share": [1.0, 0.5, 0.75], "features": "pixel-pca", "dim": 4, "fingerprint": "f",
    })
    samples = pd.DataFrame({
        "label": ["cat", "cat", EVIL, EVIL], "sample": [0, 1, 0, 1], "png": [_png(10), _png(20), _png(30), _png(40)],
        "nearest_label": ["cat", "cat", EVIL, "cat"], "seed": 3, "steps": 7,
    })
    real = {"cat": ["c1", "c2"], EVIL: ["e1", "missing"]}
    loaded = []

    def load_image(i):
        loaded.append(i)
        return None if i == "missing" else Image.new("RGB", (300, 200))

    html = samples_section(quality, samples, real, lambda b: Image.open(io.BytesIO(b)), load_image)
    assert html.startswith('<section id="samples">') and EVIL not in html
    assert "Frechet distance on pixel-pca features" in html and "FID" not in html.replace("not an FID", "")
    assert "7 DDIM steps from noise of seed 3" in html
    assert html.count('class="crop"') == 4 + 3  # 4 samples, 3 real images (one missing)
    assert "image unavailable" in html and sorted(loaded) == ["c1", "c2", "e1", "missing"]
    assert "<td class=\"n\">1.25</td><td class=\"n\">100.0%</td>" in html
    assert "<td class=\"n\">2</td><td class=\"n\">75.0%</td>" in html
    assert 'height="96"' in html  # large real images are shown at the crop height
