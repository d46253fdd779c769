"""Report sections of the applications: cotypicality and typicality as a classifier,
translation across labels, and the classic baseline side by side with the typicality elements.

Pure rendering (no file I/O): each function takes tables and image loaders and returns one
`<section>` of HTML for `ReportData.extra_sections`. Nothing in the data raises: missing images
are shown as placeholders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from gcmine.tasks.reporting.format import fmt_num, fmt_seconds
from gcmine.tasks.reporting.images import patch_crop, png_uri, scaled_to_height
from gcmine.tasks.reporting.page import patch_figure
from gcmine.tasks.reporting.templating import render

__all__ = ["baseline_section", "cotypicality_section", "translation_section"]

COLUMNS_SHOWN = 12  # crops per row in the side-by-side comparison


def _heat_matrix(matrix: pd.DataFrame, corner: str, diagonal_bold: bool = True) -> dict:
    """A label x label table whose cells are shaded from white (lowest) to red (highest)."""
    values = matrix.to_numpy(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rows = []
    for name, row in zip(matrix.index, values):
        cells = []
        for j, v in enumerate(row):
            if not np.isfinite(v):
                cells.append(None)
                continue
            f = 0.0 if hi <= lo else float(np.clip((v - lo) / (hi - lo), 0, 1))
            style = f"background: rgba(227, 26, 28, {0.08 + 0.72 * f:.2f});"
            if diagonal_bold and matrix.columns[j] == name:
                style += " font-weight: 700;"
            cells.append((style, fmt_num(v), fmt_num(v, 3)))
        rows.append((name, cells))
    return {"corner": corner, "columns": list(matrix.columns), "rows": rows}


def cotypicality_section(label_matrix: pd.DataFrame, confusion: pd.DataFrame, result: dict) -> str:
    """Cotypicality heat map (mean typicality of the images of label a under label b), the
    classifier's accuracy, confusion matrix and most confused labels.

    label_matrix: `label_matrix.parquet` (image_label, label, typicality); confusion:
    `confusion.parquet` (true, predicted, count); result: what the classify task returned."""
    labels = [str(v) for v in result.get("labels", [])]
    if label_matrix.empty or not labels:
        return render("applications/cotypicality.html", scores=False)
    acc = result.get("accuracy")
    split = result.get("split", "")
    matrix = label_matrix.pivot_table(index="image_label", columns="label", values="typicality", aggfunc="first")
    conf = confusion.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum", fill_value=0)
    conf = conf.reindex(index=labels, columns=labels, fill_value=0)
    train_acc = result.get("train_accuracy")
    return render(
        "applications/cotypicality.html",
        scores=True,
        accuracy="—" if acc is None else f"{100 * acc:.1f}%",
        images=fmt_num(result.get("images")),
        split=split,
        train_accuracy=f"{100 * train_acc:.1f}%" if train_acc is not None and split == "held-out" else None,
        chance=f"{100 / max(1, len(labels)):.1f}%",
        matrix=_heat_matrix(matrix.reindex(index=labels, columns=labels), "images \\ under"),
        confusion=_heat_matrix(conf.astype(np.float64), "true \\ predicted"),
        confused=[
            (c["true"], c["predicted"], fmt_num(c["count"]), f"{100 * c['share']:.1f}%")
            for c in result.get("confused") or []
        ],
    )


def _thumb(img: Image.Image | None) -> dict | None:
    """An image scaled up to the crop height, as the ``thumb`` macro draws it (None: missing)."""
    if img is None:
        return None
    shown = scaled_to_height(img)
    return {"src": png_uri(shown), "width": shown.width, "height": shown.height}


def translation_section(
    translations: pd.DataFrame,
    changes: pd.DataFrame,
    load_png: Callable[[str], Image.Image | None],
    result: dict,
    per_cluster: int = 8,
) -> str:
    """Sources and their translations to every other label (with typicality under the target
    before and after), then the consistent-change clusters (source patch -> translated patch).

    translations: `translations.parquet`; changes: `translation_changes.parquet`; load_png:
    run-root PNG path -> image (None if unavailable)."""
    if translations.empty:
        return render("applications/translation.html", translations=None)
    first = translations.iloc[0]
    intro = {
        "strength": fmt_num(first["strength"]),
        "guidance": fmt_num(first["guidance"]),
        "seed": fmt_num(first["seed"]),
        "seconds": fmt_seconds(result.get("seconds")),
        "gain": fmt_num(result.get("typicality_gain")),
    }
    sources = []
    for source_file, group in translations.groupby("source_file", sort=True):
        head = group.iloc[0]
        targets = [
            (_thumb(load_png(r["file"])), r["target"], fmt_num(r["typicality_source"], 3), fmt_num(r["typicality"], 3))
            for _, r in group.iterrows()
        ]
        sources.append((_thumb(load_png(source_file)), head["label"], str(head["image_id"])[:12], targets))
    clusters = []
    if not changes.empty:
        files = translations.set_index("pair")[["file", "source_file"]]
        for cluster, members in changes.groupby("change_cluster", sort=True):
            members = members.sort_values("change", ascending=False, kind="stable")
            pairs = members.apply(lambda r: f"{r['label']} → {r['target']}", axis=1).value_counts()
            crops = []
            for _, p in members.head(per_cluster).iterrows():
                box = (int(p["x0"]), int(p["y0"]), int(p["x1"]), int(p["y1"]))
                for which in ("source_file", "file"):
                    img = load_png(files.loc[p["pair"], which]) if p["pair"] in files.index else None
                    crop = None if img is None else patch_crop(img, box)[0]
                    crops.append(
                        (_thumb(crop), "before" if which == "source_file" else f"after ({fmt_num(p['change'], 2)})")
                    )
            clusters.append(
                {
                    "rank": int(cluster) + 1,
                    "patches": len(members),
                    "median": fmt_num(float(members["change"].median()), 3),
                    "pairs": ", ".join(f"{k} ({v})" for k, v in pairs.head(4).items()),
                    "crops": crops,
                }
            )
    return render("applications/translation.html", translations=True, intro=intro, sources=sources, clusters=clusters)


def baseline_section(
    baseline: pd.DataFrame,
    detectors: pd.DataFrame,
    elements: pd.DataFrame,
    patches: pd.DataFrame,
    load_image: Callable[[str], Image.Image | None],
    timings: dict,
    per_row: int = COLUMNS_SHOWN,
) -> str:
    """Per label, the typicality rank-0 element's patches beside the baseline's best detector's
    top detections, with the time each miner took (`timings`: typicality, baseline seconds)."""

    def image(image_id: str) -> Image.Image | None:
        try:
            return load_image(image_id)
        except Exception:
            return None

    times = {"typicality": fmt_seconds(timings.get("typicality")), "baseline": fmt_seconds(timings.get("baseline"))}
    if baseline.empty:
        return render("applications/baseline.html", times=times, labels=None)
    purity = detectors.set_index(["label", "detector"])["purity"] if not detectors.empty else pd.Series(dtype=float)
    labels = []
    for label in sorted(set(baseline["label"].astype(str)) | set(elements["label"].astype(str))):
        best = elements[(elements["label"].astype(str) == label) & (elements["rank"] == 0)]
        typ = pd.DataFrame()
        if not best.empty:
            typ = patches[(patches["label"].astype(str) == label) & (patches["element"] == best["element"].iloc[0])]
            typ = typ.sort_values("typicality", ascending=False, kind="stable").head(per_row)
        det = baseline[(baseline["label"].astype(str) == label) & (baseline["detector"] == 0)]
        det = det.sort_values("rank", kind="stable").head(per_row).rename(columns={"score": "typicality"})
        pur = purity.get((label, 0), float("nan")) if len(purity) else float("nan")
        on_label = float((det["image_label"].astype(str) == label).mean()) if len(det) else float("nan")
        labels.append(
            {
                "label": label,
                "typicality": [patch_figure(image, r) for _, r in typ.iterrows()],
                "baseline": [patch_figure(image, r) for _, r in det.iterrows()],
                "purity": fmt_num(pur, 2),
                "on_label": fmt_num(on_label, 2),
            }
        )
    return render("applications/baseline.html", times=times, labels=labels)
