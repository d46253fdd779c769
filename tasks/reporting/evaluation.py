"""Report sections of what was measured on the finished run: the typicality maps against the
user's boxes (`gcmine evaluate`: `evaluation_summary.parquet`, `evaluation.parquet`), and the
model's samples against the real images (`samples.parquet`, `sample_quality.parquet`).

Pure rendering (no file I/O): each function takes tables and returns one `<section>` of HTML
for `ReportData.extra_sections`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
from PIL import Image

from gcmine.tasks.reporting.format import contrast_rivals, fmt_num
from gcmine.tasks.reporting.images import CROP_HEIGHT, png_uri, scaled_to_height
from gcmine.tasks.reporting.templating import render
from gcmodels.mining.frechet import FID_FEATURES

__all__ = ["EVALUATION_MEASURES", "evaluation_section", "samples_section"]

#: (column of evaluation_summary.parquet, header, tooltip), in the order shown
EVALUATION_MEASURES = [
    (
        "aucpr_paper",
        "AUC-PR (paper)",
        "the paper's X-ray AUC-PR: 1000 thresholds 2e-s, s in [2, 7], trapezoid over recall",
    ),
    ("ap", "AP", "average precision of the pixels ranked by typicality (scale-free)"),
    ("pointing", "pointing", "share of maps whose maximum lies inside a box"),
    ("inside", "inside", "mean typicality inside the boxes"),
    ("outside", "outside", "mean typicality outside the boxes"),
]
POOLED = "(all)"


def _pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else f"{100 * float(value):.1f}%"


def evaluation_section(
    summary: pd.DataFrame, table: pd.DataFrame | None = None, stale: bool = False, maps_kind: str = "typicality"
) -> str:
    """Per model and label, and pooled over every evaluated (image, label) pair (`(all)`, the
    micro-average, shown first): the number of pairs and the mean of every measure.

    summary: `evaluation_summary.parquet` (model, label, pairs, aucpr_paper, ap, pointing,
    inside, outside); table: `evaluation.parquet` (for the count of skipped box pairs by reason),
    or None; stale: the evaluation was made on the maps of an earlier run of this root; maps_kind:
    what the maps are (the score stage's; label contrast is not the paper's map, which the page says)."""
    rows = []
    if not summary.empty:
        s = summary.assign(_pooled=summary["label"].astype(str) != POOLED)
        s = s.sort_values(["model", "_pooled", "label"], kind="stable", key=lambda c: c.astype(str))
        for _, r in s.iterrows():
            pooled = str(r["label"]) == POOLED
            rows.append(
                {
                    "model": str(r["model"]),
                    "label": "all labels (micro-average)" if pooled else str(r["label"]),
                    "pooled": pooled,
                    "pairs": fmt_num(int(r["pairs"])),
                    "values": [
                        _pct(r[m]) if m in ("aucpr_paper", "ap", "pointing") else fmt_num(float(r[m]), 3)
                        for m, _, _ in EVALUATION_MEASURES
                    ],
                }
            )
    skipped = []
    if table is not None and not table.empty and "status" in table.columns:
        bad = table[table["status"] != "ok"].drop_duplicates(["filename", "label"])  # once, not once per model
        if len(bad):
            kinds = (
                bad["reason"].fillna("").astype(str).str.replace(r"^row \d+: ", "", regex=True).str.split(":").str[0]
            )
            skipped = [(k, fmt_num(int(v))) for k, v in kinds.value_counts().sort_index().items()]
    return render(
        "evaluation.html",
        rows=rows,
        measures=[(h, tip) for _, h, tip in EVALUATION_MEASURES],
        skipped=skipped,
        stale=stale,
        contrast=maps_kind if contrast_rivals(maps_kind) else None,
    )


def _shown(img: Image.Image | None, height: int = CROP_HEIGHT) -> dict | None:
    """An image at about `height` pixels tall (small ones upscaled by an integer factor, large
    ones downscaled), as the ``thumb`` macro draws it; None: missing."""
    if img is None:
        return None
    if img.height > height:
        img = img.convert("RGB").resize(
            (max(1, round(img.width * height / img.height)), height), Image.Resampling.BILINEAR
        )
    else:
        img = scaled_to_height(img, height)
    return {"src": png_uri(img), "width": img.width, "height": img.height}


def samples_section(
    quality: pd.DataFrame,
    samples: pd.DataFrame,
    real: dict[str, list[str]],
    load_png: Callable[[bytes], Image.Image | None],
    load_image: Callable[[str], Image.Image | None],
) -> str:
    """Did the model learn the data? Per label, its samples beside real images of the label, the
    Frechet distance between the two on the encoder's features and the share of samples whose
    nearest real image carries the label; then the same over every label.

    quality: `sample_quality.parquet`; samples: `samples.parquet`; real: label -> image ids of the
    real images shown; load_png: PNG bytes -> image; load_image: image id -> original image
    (None: unavailable)."""
    if quality.empty:
        return render("samples.html", rows=None)
    first = quality.iloc[0]
    features = str(first["features"])
    rows = []
    for _, q in quality.iterrows():
        label = str(q["label"])
        pooled = label == POOLED
        mine = (
            samples[samples["label"].astype(str) == label].sort_values("sample", kind="stable")
            if not pooled
            else samples.iloc[0:0]
        )
        rows.append(
            {
                "label": "all labels" if pooled else label,
                "pooled": pooled,
                "samples": fmt_num(int(q["samples"])),
                "real_images": fmt_num(int(q["real_images"])),
                "frechet": fmt_num(float(q["frechet"]), 4),
                "share": _pct(q["nearest_label_share"]),
                "generated": [(_shown(load_png(b)), f"→ {n}") for b, n in zip(mine["png"], mine["nearest_label"])],
                "real": [(_shown(load_image(i)), "real") for i in real.get(label, [])],
            }
        )
    steps = int(samples["steps"].iloc[0]) if len(samples) else None
    seed = int(samples["seed"].iloc[0]) if len(samples) else None
    chance = 1.0 / max(1, len(quality) - 1)
    return render(
        "samples.html",
        rows=rows,
        features=features,
        fid=features == FID_FEATURES,
        dim=fmt_num(int(first["dim"])),
        steps=steps,
        seed=seed,
        chance=_pct(chance),
    )
