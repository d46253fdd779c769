"""The report's "collection at a glance" section: which labels condition the model (given, or
the discovered clusters), a 2-D map of the collection coloured by cluster and by label, a few
thumbnails per cluster, and - for small collections - an interactive map (hover a point: its
image).

`map_section(...)` returns an HTML fragment; it reads no file (images come through the
`load_image` callable). Every string from the data is escaped; the interactive map's only script
is the fixed `_HOVER_JS` below (no data is ever interpolated into it), and images are inline data
URIs, so the page still needs no network.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image

from gcmodels.collection import cluster_name

__all__ = ["MAP_CSS", "MAX_MAP_POINTS", "map_section"]

#: points drawn in a static map (a seeded random subset beyond)
MAX_MAP_POINTS = 5000
#: side of the thumbnails (per cluster, and on hover)
THUMB_SIDE = 64
#: colours of the first clusters / labels (tab20); more reuse them; noise and unlabelled are grey
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)
GREY = "#b0b0b0"

MAP_CSS = """
.cmaps { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 18px; }
svg.cmap { width: 100%; height: auto; background: #fbfbfa; border: 1px solid var(--line); border-radius: 4px; }
svg.cmap circle { stroke: #fff; stroke-width: .6; }
svg.cmap.live circle:hover { stroke: #000; stroke-width: 2; }
.maplegend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 12px; margin: 4px 0 8px; }
.maplegend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; vertical-align: middle; }
.thumbrow { display: grid; grid-template-columns: 160px 1fr; gap: 10px; padding: 6px 0; border-top: 1px solid var(--line); }
.thumbrow img { width: 64px; height: 64px; object-fit: cover; image-rendering: pixelated; border: 1px solid var(--line); margin-right: 4px; }
#map-tip { position: absolute; display: none; pointer-events: none; background: #fff; border: 1px solid #888;
  border-radius: 4px; padding: 4px; box-shadow: 0 2px 8px rgba(0,0,0,.25); font-size: 11px; z-index: 10; }
#map-tip img { display: block; width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; }
#map-thumbs { display: none; }
"""

# Fixed text: shows the hovered point's thumbnail (from the hidden #map-thumbs images) and
# caption (textContent, never HTML) next to the pointer.
_HOVER_JS = """
(function () {
  var tip = document.getElementById("map-tip"), store = document.getElementById("map-thumbs");
  if (!tip || !store) return;
  var img = tip.querySelector("img"), cap = tip.querySelector("span");
  document.querySelectorAll("svg.cmap.live circle[data-i]").forEach(function (c) {
    c.addEventListener("mouseenter", function () {
      var t = document.getElementById("mt-" + c.getAttribute("data-i"));
      img.src = t ? t.src : ""; cap.textContent = c.getAttribute("data-cap") || ""; tip.style.display = "block";
    });
    c.addEventListener("mousemove", function (e) { tip.style.left = (e.pageX + 14) + "px"; tip.style.top = (e.pageY + 14) + "px"; });
    c.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  });
})();
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _jpeg_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(load_image: Callable[[str], Image.Image], image_id: str) -> str | None:
    """A THUMB_SIDE-px JPEG data URI of the image (about 2 kB: a thousand fit in a few MB of
    HTML), or None if it cannot be loaded."""
    try:
        img = load_image(image_id)
        if img is None:
            return None
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        return _jpeg_uri(img)
    except Exception:  # noqa: BLE001 - a missing image is shown as missing, not fatal
        return None


def _colors(keys: list) -> dict:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _name(cluster: int, k: int) -> str:
    return "noise (-1)" if cluster < 0 else cluster_name(cluster, k)


def _svg(df: pd.DataFrame, color: pd.Series, title: str, live: bool, captions: list[str] | None, size=(560, 420)) -> str:
    """Points (df.x, df.y) as circles filled with `color`; with `live`, each circle carries its
    row position (data-i) and caption (data-cap) for the hover script."""
    w, h = size
    pad = 12
    x = df["x"].to_numpy(np.float64)
    y = df["y"].to_numpy(np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    lo_x, hi_x = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
    lo_y, hi_y = (float(y[ok].min()), float(y[ok].max())) if ok.any() else (0.0, 1.0)
    sx = (w - 2 * pad) / (hi_x - lo_x) if hi_x > lo_x else 0.0
    sy = (h - 2 * pad) / (hi_y - lo_y) if hi_y > lo_y else 0.0
    px = pad + (x - lo_x) * sx if sx else np.full_like(x, w / 2)
    py = h - pad - (y - lo_y) * sy if sy else np.full_like(y, h / 2)
    r = 4 if len(df) <= 500 else 2.5 if len(df) <= 2000 else 1.6
    parts = [
        f'<svg class="cmap{" live" if live else ""}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="{_esc(title)}">'
    ]
    for i in np.flatnonzero(ok):
        attrs = f'cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="{r}" fill="{color.iloc[i]}"'
        if live and captions is not None:
            attrs += f' data-i="{i}" data-cap="{_esc(captions[i])}"'
        parts.append(f"<circle {attrs}/>")
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: list[tuple[str, str, int]]) -> str:
    return '<div class="maplegend">' + "".join(
        f'<span><i style="background:{c}"></i>{_esc(name)} ({n:,})</span>' for name, c, n in items
    ) + "</div>"


def _decision(conditioning: dict | None) -> str:
    if not conditioning:
        return ""
    source = conditioning.get("source")
    reason = conditioning.get("reason", "")
    labels = conditioning.get("labels") or {}
    unl = int(conditioning.get("unlabelled") or 0)
    noise = int(conditioning.get("noise") or 0)
    if source == "clusters":
        text = (
            f"Mined without labels ({reason}): the {len(labels)} discovered clusters condition the model and name "
            f"the label sections below"
        )
        if noise:
            text += f"; {noise:,} noise image(s) (cluster -1) are left unlabelled: they train the unconditional branch only and are not scored"
    else:
        text = f"The given labels condition the model ({reason}); {len(labels)} label(s)"
        if unl:
            text += f", {unl:,} unlabelled image(s) train the unconditional branch only"
    return f'<p class="decision"><b>Conditioning:</b> {_esc(text + ".")}</p>'


def map_section(
    points: pd.DataFrame | None,
    clusters: pd.DataFrame | None,
    conditioning: dict | None,
    load_image: Callable[[str], Image.Image],
    *,
    method: str = "pca",
    interactive_max: int = 1000,
    thumbnails_per_cluster: int = 4,
    seed: int = 0,
) -> str:
    """The section ``<section id="glance">``.

    points: the collection map (image_id, x, y, cluster, and label: the given label or null);
    clusters: clusters.parquet (image_id, cluster, distance) for the thumbnails (the
    `thumbnails_per_cluster` images nearest their cluster mean); conditioning: the decision of
    the condition stage (source, reason, labels, unlabelled, noise). The maps are interactive
    (hover: the image) when there are at most `interactive_max` points; beyond `MAX_MAP_POINTS`
    a seeded random subset is drawn.
    """
    out = ['<section id="glance"><h2>The collection at a glance</h2>', _decision(conditioning)]
    if points is None or points.empty or not {"image_id", "x", "y", "cluster"} <= set(points.columns):
        out.append('<p class="empty">No collection map.</p></section>')
        return "".join(out)
    pts = points.reset_index(drop=True)
    n = len(pts)
    live = 0 < n <= interactive_max
    shown = pts
    if n > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:MAX_MAP_POINTS])
        shown = pts.iloc[rows].reset_index(drop=True)
    cl = shown["cluster"].astype(np.int64)
    k = int(pts["cluster"].max()) + 1 if len(pts) else 0
    ids = sorted(int(c) for c in pts["cluster"].unique() if c >= 0)
    ccolor = _colors(ids)
    cluster_color = cl.map(lambda c: ccolor.get(int(c), GREY))
    counts = pts["cluster"].value_counts()
    items = [(_name(c, k), ccolor[c], int(counts.get(c, 0))) for c in ids]
    if -1 in counts.index:
        items.append((_name(-1, k), GREY, int(counts[-1])))
    has_label = "label" in shown.columns and shown["label"].map(lambda v: isinstance(v, str)).any()
    labels = sorted({v for v in pts["label"] if isinstance(v, str)}) if has_label else []
    lcolor = _colors(labels)
    captions = None
    if live:
        captions = [
            f"{iid} · {_name(int(c), k)}" + (f" · {lab}" if isinstance(lab, str) else "")
            for iid, c, lab in zip(shown["image_id"], cl, shown["label"] if "label" in shown else [None] * len(shown))
        ]
    facts = f"{n:,} images, {method} of the embeddings"
    if len(shown) < n:
        facts += f"; {len(shown):,} random points drawn"
    facts += "; hover a point to see its image" if live else f"; interactive above no more than {interactive_max:,} images"
    out.append(f'<p class="sub">{_esc(facts)}</p><div class="cmaps">')
    out.append("<div><h3>Coloured by cluster</h3>" + _legend(items) + _svg(shown, cluster_color, "map by cluster", live, captions) + "</div>")
    if has_label:
        label_color = shown["label"].map(lambda v: lcolor.get(v, GREY) if isinstance(v, str) else GREY)
        lcounts = pts["label"].value_counts()
        litems = [(lab, lcolor[lab], int(lcounts.get(lab, 0))) for lab in labels]
        unl = int(pts["label"].map(lambda v: not isinstance(v, str)).sum())
        if unl:
            litems.append(("unlabelled", GREY, unl))
        out.append("<div><h3>Coloured by label</h3>" + _legend(litems) + _svg(shown, label_color, "map by label", live, captions) + "</div>")
    else:
        out.append('<div><h3>Coloured by label</h3><p class="empty">No labels were given.</p></div>')
    out.append("</div>")

    if thumbnails_per_cluster > 0 and clusters is not None and not clusters.empty:
        out.append("<h3>Images nearest each cluster's centre</h3>")
        cd = clusters.assign(_d=pd.to_numeric(clusters.get("distance"), errors="coerce"))
        for c in ids + ([-1] if -1 in counts.index else []):
            members = cd[cd["cluster"] == c].sort_values("_d", kind="stable", na_position="last")
            imgs = []
            for iid in members["image_id"].head(thumbnails_per_cluster):
                uri = _thumb(load_image, iid)
                imgs.append(
                    f'<img src="{uri}" alt="{_esc(iid)}" title="{_esc(iid)}">' if uri else f'<span class="empty">{_esc(iid)}</span>'
                )
            color = ccolor.get(c, GREY)
            out.append(
                f'<div class="thumbrow"><div><i style="display:inline-block;width:10px;height:10px;border-radius:50%;'
                f'background:{color}"></i> <b>{_esc(_name(c, k))}</b><br><span class="sub">{int(counts.get(c, 0)):,} images</span>'
                f'</div><div>{"".join(imgs)}</div></div>'
            )

    if live:
        thumbs = []
        for i, iid in enumerate(shown["image_id"]):
            uri = _thumb(load_image, iid)
            if uri:
                thumbs.append(f'<img id="mt-{i}" src="{uri}" alt="">')
        out.append(f'<div id="map-thumbs">{"".join(thumbs)}</div><div id="map-tip"><img alt=""><span></span></div>')
        out.append(f"<script>{_HOVER_JS}</script>")
    out.append("</section>")
    return "".join(out)

