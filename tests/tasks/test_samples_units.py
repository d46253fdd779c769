"""The report's section of the samples beside real images (tasks/reporting/evaluation.py)."""

from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from gcmine.tasks.reporting import samples_section
from gcmodels.mining.frechet import ALL

EVIL = "<script>alert(1)</script>"


def _png(color: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_samples_section_shows_samples_real_images_and_numbers() -> None:
    quality = pd.DataFrame(
        {
            "label": ["cat", EVIL, ALL],
            "samples": [2, 2, 4],
            "real_images": [5, 6, 11],
            "frechet": [1.25, 3.5, 2.0],
            "nearest_label_share": [1.0, 0.5, 0.75],
            "features": "pixel-pca",
            "dim": 4,
            "fingerprint": "f",
        }
    )
    samples = pd.DataFrame(
        {
            "label": ["cat", "cat", EVIL, EVIL],
            "sample": [0, 1, 0, 1],
            "png": [_png(10), _png(20), _png(30), _png(40)],
            "nearest_label": ["cat", "cat", EVIL, "cat"],
            "seed": 3,
            "steps": 7,
        }
    )
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
    assert '<td class="n">1.25</td><td class="n">100.0%</td>' in html
    assert '<td class="n">2</td><td class="n">75.0%</td>' in html
    assert 'height="96"' in html  # large real images are shown at the crop height
