"""The HTML report: a pure function from mined results to one self-contained HTML page.

``render_report(data)`` returns a string; it reads and writes no file itself (images and
typicality maps come through the ``load_image`` / ``load_map`` callables of ``ReportData``).
The page opens from disk with no server and no network: every image is an embedded base64 data
URI, the CSS is inline, and there is no script, except the fixed hover script of the interactive
collection map (static/map_hover.js; small collections only), into which no data is ever
interpolated.

The functions here choose and format what each section shows (plain values); the markup is in
templates/, rendered with autoescaping, so every string from the data (labels, image ids,
sources, reasons, metric names, config keys and values) is HTML-escaped. Element ids and anchors
are built from an ASCII slug plus an index, never from the raw label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from gcmine.tasks.reporting.charts import loss_curve_svg
from gcmine.tasks.reporting.format import (
    contrast_rivals,
    flatten,
    fmt_num,
    fmt_seconds,
    int_or,
    is_number,
    label_anchors,
)
from gcmine.tasks.reporting.glance import map_section
from gcmine.tasks.reporting.images import (
    ImageCache,
    display_image,
    overlay_typicality,
    patch_crop,
    png_uri,
    robust_vmax,
)
from gcmine.tasks.reporting.templating import Markup, render, static_text

__all__ = ["MAX_REJECTED_ROWS", "ReportData", "patch_figure", "render_report"]

#: rejected inputs listed in the table
MAX_REJECTED_ROWS = 50

_SUMMARY_CARDS = {
    "images": "images",
    "ok": "images ok",
    "rejected": "rejected",
    "labels": "labels",
    "unlabeled": "unlabeled",
    "missing_files": "missing files",
    "device": "device",
}


@dataclass
class ReportData:
    """Everything the report shows; see ``render_report``."""

    title: str
    summary: dict
    labels: list[str]
    elements: pd.DataFrame
    patches: pd.DataFrame
    typicality: pd.DataFrame
    clusters: pd.DataFrame
    cluster_metrics: pd.DataFrame
    training: pd.DataFrame
    rejected: pd.DataFrame
    load_image: Callable[[str], Image.Image]
    load_map: Callable[[str], np.ndarray]
    # the collection at a glance (glance.py): map points (image_id, x, y, cluster, label),
    # the conditioning decision, and the projection that made the map
    collection_map: pd.DataFrame | None = None
    conditioning: dict | None = None
    map_method: str = "pca"
    #: what the maps are (the score stage's `maps_kind`): "typicality" or "label contrast (cycled)" / "(all)"
    maps_kind: str = "typicality"
    #: extra sections (anchor, title, already-rendered HTML), shown before the collection section
    extra_sections: list[tuple[str, str, str]] = field(default_factory=list)


def _has(df: Any, columns: Iterable[str]) -> bool:
    return isinstance(df, pd.DataFrame) and not df.empty and all(c in df.columns for c in columns)


def patch_figure(image: Callable[[str], Image.Image | None], row: Any) -> dict:
    """What the ``patch_figure`` macro draws for a patch `row` (image_id, x0, y0, x1, y1,
    typicality): the crop with its box as a data URI, or the reason it is missing.
    `image`: image_id -> image or None."""
    image_id = str(row["image_id"])
    try:
        typ = float(row["typicality"])
    except (TypeError, ValueError, KeyError):
        typ = float("nan")
    fig = {"tip": f"{image_id} · typicality {fmt_num(typ)}", "caption": fmt_num(typ, 3), "missing": None}
    img = image(image_id)
    if img is None:
        return {**fig, "missing": "image unavailable"}
    try:
        crop, _ = patch_crop(img, (row["x0"], row["y0"], row["x1"], row["y1"]))
    except Exception:
        return {**fig, "missing": "bad patch box"}
    return {**fig, "src": png_uri(crop), "width": crop.width, "height": crop.height}


# --------------------------------------------------------------------------- sections


def _summary(data: ReportData) -> dict:
    summary = data.summary if isinstance(data.summary, dict) else {}
    cards = [
        (fmt_num(v) if isinstance(v, (int, float, np.integer, np.floating)) else str(v), name)
        for key, name in _SUMMARY_CARDS.items()
        if (v := summary.get(key)) is not None
    ]
    handled = set(_SUMMARY_CARDS) | {"rejected_by_reason", "timings", "config", "notes"}
    others = [
        (k, fmt_num(v) if is_number(v) else v)
        for k, v in summary.items()
        if k not in handled and not isinstance(v, (dict, list, tuple))
    ]

    timings = None
    if isinstance(summary.get("timings"), dict) and summary["timings"]:
        vals = {}
        for k, v in summary["timings"].items():
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                vals[k] = float("nan")
        total = sum(v for v in vals.values() if math.isfinite(v))
        rows = [
            (k, fmt_seconds(v), 0 if not (math.isfinite(v) and total > 0) else max(1, round(120 * v / total)))
            for k, v in vals.items()
        ]
        timings = {"rows": rows, "total": fmt_seconds(total)}

    by_reason = summary.get("rejected_by_reason")
    reasons = None
    if isinstance(by_reason, dict) and by_reason:
        reasons = [
            (k, fmt_num(v))
            for k, v in sorted(by_reason.items(), key=lambda kv: -float(kv[1]) if is_number(kv[1]) else 0)
        ]
    elif _has(data.rejected, ["reason"]):
        reasons = [(k, fmt_num(int(v))) for k, v in data.rejected["reason"].astype(str).value_counts().items()]

    notes = summary.get("notes")
    config = summary.get("config")
    return {
        "recorded": bool(summary),
        "cards": cards,
        "timings": timings,
        "reasons": reasons,
        "notes": list(notes) if isinstance(notes, (list, tuple)) and notes else None,
        "others": others,
        "config": flatten(config) if isinstance(config, dict) and config else None,
    }


def _certainty(e: Any) -> str | None:
    """How certain an element's score is, in words: the 95 % interval of its median over its
    patches, the draws its patches' images were scored with, and (adaptive scoring) the median
    Monte Carlo standard error of their top patch; None for an elements table without them."""
    parts = []
    lo, hi = e.get("score_lo"), e.get("score_hi")
    if is_number(lo) and is_number(hi) and not (math.isnan(lo) or math.isnan(hi)):
        parts.append(f"95 % interval {fmt_num(lo)} to {fmt_num(hi)}")
    draws, se = e.get("draws"), e.get("patch_se")
    if is_number(draws) and not math.isnan(draws):
        parts.append(f"{fmt_num(round(float(draws), 1))} draws a patch")
    if is_number(se) and not math.isnan(se):
        parts.append(f"Monte Carlo SE {fmt_num(se)}")
    return " · ".join(parts) or None


def _shared(e: Any) -> str | None:
    """Words for an element shared with other labels (elements.parquet `shared`, `specificity`),
    else None."""
    if not bool(e.get("shared", False)):
        return None
    spec = e.get("specificity")
    if not is_number(spec) or math.isnan(spec):
        return "shared with other labels"
    return f"shared with other labels (only {fmt_num(round(100 * float(spec)))} % of its patches' nearest patches are this label's)"


def _label(
    data: ReportData,
    cache: ImageCache,
    label: str,
    anchor: str,
    vmax: float,
    heat_ids: list[tuple[str, float]],
    elements_per_label: int,
    patches_per_element: int,
) -> dict:
    facts = []
    if _has(data.typicality, ["label", "image_id"]):
        sub = data.typicality[data.typicality["label"].astype(str) == label]
        facts.append(f"{fmt_num(sub['image_id'].nunique())} images")
        if "typicality" in sub and len(sub):
            facts.append(
                f"median image {'contrast' if contrast_rivals(data.maps_kind) else 'typicality'} "
                f"{fmt_num(float(pd.to_numeric(sub['typicality'], errors='coerce').median()))}"
            )
    lp = pd.DataFrame()
    if _has(data.patches, ["label", "image_id", "x0", "y0", "x1", "y1"]):
        lp = data.patches[data.patches["label"].astype(str) == label]
        facts.append(f"{fmt_num(len(lp))} patches")
    le = pd.DataFrame()
    if _has(data.elements, ["label", "element"]):
        le = data.elements[data.elements["label"].astype(str) == label]
        if "rank" in le.columns:
            le = le.sort_values("rank", kind="stable")
        facts.append(f"{fmt_num(len(le))} elements")

    elements = None
    if not le.empty:
        shown = le.head(elements_per_label)
        have_members = not lp.empty and "element" in lp.columns
        items = []
        for i, (_, e) in enumerate(shown.iterrows()):
            crops = []
            if have_members:
                members = lp[pd.to_numeric(lp["element"], errors="coerce") == int_or(e["element"], -(10**9))]
                if "typicality" in members.columns:
                    members = members.assign(_t=pd.to_numeric(members["typicality"], errors="coerce")).sort_values(
                        "_t", ascending=False, kind="stable", na_position="last"
                    )
                crops = [patch_figure(cache.image, p) for _, p in members.head(patches_per_element).iterrows()]
            items.append(
                {
                    "rank": fmt_num(int_or(e.get("rank", i), i) + 1),
                    "score": fmt_num(e["score"]) if "score" in e else None,
                    "size": fmt_num(e["size"]) if "size" in e else None,
                    "certainty": _certainty(e),
                    "shared": _shared(e),
                    "element": fmt_num(e["element"]),
                    "crops": crops,
                }
            )
        note = f"Showing the top {len(shown)} of {len(le)} elements." if len(le) > len(shown) else None
        elements = {"note": note, "items": items}

    heatmaps = []
    for image_id, score in heat_ids:
        fig = {"image_id": image_id, "score": fmt_num(score), "kind": "missing"}
        img = cache.image(image_id)
        if img is not None:
            m = cache.map(image_id)
            disp = display_image(img)
            fig.update(kind="plain" if m is None else "overlay", src=png_uri(disp))
            if m is not None:
                fig["overlay"] = png_uri(overlay_typicality(disp, m, vmax))
        heatmaps.append(fig)
    return {"anchor": anchor, "label": label, "facts": " · ".join(facts), "elements": elements, "heatmaps": heatmaps}


def _collection(data: ReportData, labels: list[str]) -> dict:
    metrics = None
    if _has(data.cluster_metrics, ["metric", "value"]):
        metrics = [(r["metric"], fmt_num(r["value"])) for _, r in data.cluster_metrics.iterrows()]

    sizes = None
    if _has(data.clusters, ["cluster"]):
        cl = data.clusters
        counts = cl["cluster"].value_counts().sort_index()
        biggest = max(1, int(counts.max()))
        dist = (
            pd.to_numeric(cl["distance"], errors="coerce").groupby(cl["cluster"]).mean()
            if "distance" in cl.columns
            else None
        )
        sizes = {
            "has_distance": dist is not None,
            "rows": [
                (
                    fmt_num(c),
                    fmt_num(int(n)),
                    None if dist is None else fmt_num(dist.get(c, float("nan")), 3),
                    max(1, round(140 * int(n) / biggest)),
                )
                for c, n in counts.items()
            ],
        }

    crosstab = None  # None: no table at all; {"rows": []}: no labelled image
    if sizes is not None and "label" in data.clusters.columns:
        cl = data.clusters[data.clusters["label"].notna()]
        crosstab = {"rows": []}
        if not cl.empty:
            ct = pd.crosstab(cl["label"].astype(str), cl["cluster"])
            order = [lab for lab in labels if lab in ct.index]
            ct = ct.reindex(order + sorted(set(ct.index) - set(order)))
            cols = list(ct.columns)
            rows = []
            for lab, r in ct.iterrows():
                total = int(r.sum())
                cells = []
                for c in cols:
                    v = int(r[c])
                    alpha = 0.08 + 0.6 * v / total if total and v else 0  # background shade: share of the label
                    cells.append((v, f"{alpha:.2f}"))
                rows.append((lab, cells, total))
            crosstab = {
                "columns": [fmt_num(c) for c in cols],
                "rows": rows,
                "totals": [int(ct[c].sum()) for c in cols],
                "total": int(ct.values.sum()),
            }
    return {"metrics": metrics, "sizes": sizes, "crosstab": crosstab}


def _training(data: ReportData) -> dict | None:
    tr = data.training
    if not _has(tr, ["step", "loss"]):
        return None
    steps = pd.to_numeric(tr["step"], errors="coerce").to_numpy(dtype=np.float64)
    loss = pd.to_numeric(tr["loss"], errors="coerce").to_numpy(dtype=np.float64)
    svg = loss_curve_svg(steps, loss)
    if not svg:
        return None
    ok = np.isfinite(steps) & np.isfinite(loss)
    facts = [
        f"{fmt_num(int(ok.sum()))} logged steps",
        f"last loss {fmt_num(loss[ok][np.argmax(steps[ok])])}",
        f"min loss {fmt_num(loss[ok].min())}",
    ]
    if "lr" in tr.columns:
        lr = pd.to_numeric(tr["lr"], errors="coerce").dropna()
        if len(lr):
            facts.append(f"final lr {fmt_num(lr.iloc[-1], 3)}")
    if "seconds" in tr.columns:
        sec = pd.to_numeric(tr["seconds"], errors="coerce").dropna()
        if len(sec):
            facts.append(f"{fmt_seconds(sec.max())} elapsed")
    return {"facts": " · ".join(facts), "svg": Markup(svg)}


def _rejected(data: ReportData) -> dict | None:
    rj = data.rejected
    if not isinstance(rj, pd.DataFrame) or rj.empty:
        return None
    n = len(rj)
    cols = [c for c in ("source", "reason") if c in rj.columns] or [str(c) for c in rj.columns]
    return {
        "count": f"{n:,} rejected input" + ("s" if n != 1 else ""),
        "limit": f"; the first {MAX_REJECTED_ROWS} are listed" if n > MAX_REJECTED_ROWS else None,
        "columns": cols,
        "rows": [[r[c] for c in cols] for _, r in rj.head(MAX_REJECTED_ROWS).iterrows()],
    }


# --------------------------------------------------------------------------- entry point


def render_report(
    data: ReportData,
    *,
    elements_per_label: int = 6,
    patches_per_element: int = 8,
    heatmaps_per_label: int = 4,
    map_interactive_max: int = 1000,
    map_thumbnails_per_cluster: int = 4,
) -> str:
    """Render the whole report as one self-contained HTML string (no file I/O here).

    Sections: run summary; one section per label (in ``data.labels`` order, followed by any
    label found in ``elements``/``patches``/``typicality`` but missing from ``data.labels``)
    with its top ``elements_per_label`` elements by rank, each shown as up to
    ``patches_per_element`` crops of its member patches (highest typicality first), and the
    ``heatmaps_per_label`` images of the label with the highest image typicality with their
    typicality map overlaid; the collection (cluster metrics, sizes, label × cluster table);
    the training loss curve; the rejected inputs.

    Heat map colours share one scale across the whole report (the 99th percentile of the
    positive map values of all shown images), so intensities are comparable between images.
    The map is resized bilinearly to the image; originals larger than ``HEATMAP_MAX_SIDE`` are
    first downscaled to that display size (the map is then resized to the displayed size).
    Images that fail to load are shown as placeholders; nothing in the data raises.
    """
    cache = ImageCache(data.load_image, data.load_map)
    labels: list[str] = [str(lab) for lab in (data.labels or [])]
    seen = set(labels)
    extra: set[str] = set()
    for df in (data.elements, data.patches, data.typicality):
        if _has(df, ["label"]):
            extra |= {str(v) for v in df["label"].dropna().unique()} - seen
    labels += sorted(extra)

    # which images get a heat map, per label, and one colour scale for all of them
    heat: dict[str, list[tuple[str, float]]] = {lab: [] for lab in labels}
    if heatmaps_per_label > 0 and _has(data.typicality, ["image_id", "label", "typicality"]):
        t = data.typicality.assign(
            _label=data.typicality["label"].astype(str),
            _t=pd.to_numeric(data.typicality["typicality"], errors="coerce"),
        ).sort_values("_t", ascending=False, kind="stable", na_position="last")
        t = t.drop_duplicates(subset=["_label", "image_id"])
        for lab, sub in t.groupby("_label", sort=False):
            if lab in heat:
                top = sub.head(heatmaps_per_label)
                heat[lab] = [(str(i), float(v)) for i, v in zip(top["image_id"], top["_t"])]
    maps = [m for ids in heat.values() for image_id, _ in ids if (m := cache.map(image_id)) is not None]
    vmax = robust_vmax(maps)

    anchors = label_anchors(labels)
    glance = map_section(
        data.collection_map,
        data.clusters,
        data.conditioning,
        cache.image,
        method=data.map_method,
        interactive_max=map_interactive_max,
        thumbnails_per_cluster=map_thumbnails_per_cluster,
    )
    return render(
        "page.html",
        title=data.title,
        css=Markup(static_text("report.css") + static_text("map.css")),
        vmax=fmt_num(vmax, 3),
        contrast=contrast_rivals(data.maps_kind),
        contents=[(a, t) for a, t, _ in data.extra_sections],
        labels=list(zip(anchors, labels)),
        summary=_summary(data),
        glance=Markup(glance),
        label_sections=[
            _label(data, cache, lab, anchor, vmax, heat.get(lab, []), elements_per_label, patches_per_element)
            for lab, anchor in zip(labels, anchors)
        ],
        extra_sections=[Markup(html) for _, _, html in data.extra_sections],
        collection=_collection(data, labels),
        training=_training(data),
        rejected=_rejected(data),
    )
