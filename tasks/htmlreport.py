"""The HTML report: a pure function from mined results to one self-contained HTML page.

``render_report(data)`` returns a string; it reads and writes no file itself (images and
typicality maps come through the ``load_image`` / ``load_map`` callables of ``ReportData``).
The page opens from disk with no server and no network: every image is an embedded base64 PNG
data URI, the CSS is inline, and there is no script, except the fixed hover script of the
interactive collection map (tasks/mapreport.py; small collections only), into which no data is
ever interpolated.

Every string that comes from the data (labels, image ids, sources, reasons, metric names,
config keys and values) is HTML-escaped with ``html.escape(..., quote=True)``; element ids and
anchors are built from an ASCII slug plus an index, never from the raw label.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from tasks.mapreport import MAP_CSS, map_section

__all__ = [
    "BOX_COLOR",
    "ReportData",
    "colorize_typicality",
    "loss_curve_svg",
    "overlay_typicality",
    "patch_crop",
    "render_report",
]

#: colour of the patch box drawn on every crop (bright green, visible on most images)
BOX_COLOR: tuple[int, int, int] = (0, 255, 0)
#: target display height of a patch crop, in pixels
CROP_HEIGHT = 96
#: largest side of an embedded heat map image (originals above are downscaled)
HEATMAP_MAX_SIDE = 320
#: at most this many points are drawn per training curve (longer logs are strided)
MAX_CURVE_POINTS = 2000
#: total pixels of decoded originals kept in memory during one render (LRU beyond that)
IMAGE_CACHE_PIXELS = 200_000_000
#: rejected inputs listed in the table
MAX_REJECTED_ROWS = 50


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
    element_members: dict[tuple[str, int], list[int]] | None = None
    # the collection at a glance (tasks/mapreport.py): map points (image_id, x, y, cluster, label),
    # the conditioning decision, and the projection that made the map
    collection_map: pd.DataFrame | None = None
    conditioning: dict | None = None
    map_method: str = "pca"
    #: extra sections (anchor, title, already-rendered HTML), shown before the collection section
    extra_sections: list[tuple[str, str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- small helpers


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _slug(text: Any, index: int, prefix: str = "label") -> str:
    """A safe HTML id: prefix, index, then an ASCII slug of ``text`` (never the raw text)."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:32].strip("-")
    return f"{prefix}-{index}" + (f"-{slug}" if slug else "")


def label_anchors(labels: list[Any]) -> list[str]:
    """The HTML ids of the report's label sections, for `labels` in report order (sorted)."""
    return [_slug(lab, i) for i, lab in enumerate(labels)]


def _has(df: Any, columns: Iterable[str]) -> bool:
    return isinstance(df, pd.DataFrame) and not df.empty and all(c in df.columns for c in columns)


def _fmt_num(value: Any, digits: int = 4) -> str:
    """Numbers for humans: ints as ints, floats with ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    return str(value)


def _fmt_seconds(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(s):
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def _rgb(img: Image.Image) -> Image.Image:
    """RGB without a copy when it already is (convert() always copies); alpha over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_esc(text)}</p>'


class _Cache:
    """Loads each image and map once per ``render_report`` call; failures become None.

    Images are kept in an LRU cache bounded by ``max_pixels`` in total (so a collection of
    large originals cannot exhaust memory; small images are effectively all kept)."""

    def __init__(
        self,
        load_image: Callable[[str], Image.Image],
        load_map: Callable[[str], np.ndarray],
        max_pixels: int = IMAGE_CACHE_PIXELS,
    ):
        self._load_image, self._load_map = load_image, load_map
        self._images: OrderedDict[str, Image.Image | None] = OrderedDict()
        self._pixels = 0
        self._max_pixels = max_pixels
        self._maps: dict[str, np.ndarray | None] = {}

    def image(self, image_id: str) -> Image.Image | None:
        if image_id in self._images:
            self._images.move_to_end(image_id)
            return self._images[image_id]
        try:
            img = self._load_image(image_id)
            img = None if img is None else _rgb(img)
        except Exception:  # noqa: BLE001 - a missing image is shown as missing, not fatal
            img = None
        self._images[image_id] = img
        self._pixels += 0 if img is None else img.width * img.height
        while self._pixels > self._max_pixels and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._pixels -= 0 if old is None else old.width * old.height
        return img

    def map(self, image_id: str) -> np.ndarray | None:
        if image_id not in self._maps:
            try:
                m = self._load_map(image_id)
                m = None if m is None else np.asarray(m, dtype=np.float32)
                if m is not None and m.ndim == 3:
                    m = m.mean(axis=-1) if m.shape[-1] <= 4 else m.mean(axis=0)
                if m is not None and (m.ndim != 2 or m.size == 0):
                    m = None
                self._maps[image_id] = None if m is None else np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
            except Exception:  # noqa: BLE001
                self._maps[image_id] = None
        return self._maps[image_id]


# --------------------------------------------------------------------------- image helpers


def patch_crop(
    img: Image.Image,
    box: tuple[int, int, int, int],
    *,
    target_height: int = CROP_HEIGHT,
    color: tuple[int, int, int] = BOX_COLOR,
    line: int = 2,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Cut ``box`` (x0, y0, x1, y1; exclusive; original pixels) out of ``img`` with a margin of
    half the patch size on every side (clipped to the image), scale it to about
    ``target_height`` pixels tall (integer NEAREST upscaling for small crops, bilinear
    downscaling for large ones), and draw the patch box as a ``line``-px rectangle in ``color``.

    Returns the crop and the drawn box in crop pixels (x0, y0, x1, y1; exclusive): the outline
    covers rows/columns [x0, x0+line) and [x1-line, x1) inside it.
    """
    img = _rgb(img)
    W, H = img.size
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    pw, ph = max(1, x1 - x0), max(1, y1 - y0)
    mx, my = pw // 2, ph // 2
    cx0, cy0 = max(0, min(W - 1, x0 - mx)), max(0, min(H - 1, y0 - my))
    cx1, cy1 = min(W, max(cx0 + 1, x1 + mx)), min(H, max(cy0 + 1, y1 + my))
    crop = img.crop((cx0, cy0, cx1, cy1))
    cw, ch = crop.size
    if ch < target_height:
        scale: float = float(max(1, round(target_height / ch)))
        crop = crop.resize((cw * int(scale), ch * int(scale)), Image.Resampling.NEAREST)
    elif ch > target_height:
        scale = target_height / ch
        crop = crop.resize((max(1, round(cw * scale)), target_height), Image.Resampling.BILINEAR)
    else:
        scale = 1.0
    sw, sh = crop.size
    # the patch box (clipped to the crop) in crop pixels, exclusive upper bounds
    bx0 = int(round((max(x0, cx0) - cx0) * scale))
    by0 = int(round((max(y0, cy0) - cy0) * scale))
    bx1 = int(round((min(x1, cx1) - cx0) * scale))
    by1 = int(round((min(y1, cy1) - cy0) * scale))
    bx0, by0 = min(bx0, sw - 1), min(by0, sh - 1)
    bx1, by1 = max(bx0 + 1, min(bx1, sw)), max(by0 + 1, min(by1, sh))
    ImageDraw.Draw(crop).rectangle((bx0, by0, bx1 - 1, by1 - 1), outline=color, width=line)
    return crop, (bx0, by0, bx1, by1)


# warm ramp for typical (positive) values: pale yellow -> orange -> red -> dark red
_WARM_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_WARM_RGB = np.array([[255, 237, 100], [254, 153, 41], [227, 26, 28], [150, 0, 38]], dtype=np.float32)
_COOL_RGB = np.array([49, 130, 189], dtype=np.float32)
_WARM_MAX_ALPHA = 0.8
_COOL_MAX_ALPHA = 0.35


def colorize_typicality(m: np.ndarray, vmax: float) -> np.ndarray:
    """RGBA float32 (h, w, 4) in [0, 1] for a typicality map: positive values in warm colours
    (pale yellow -> red) whose opacity grows from 0 at 0 to ``_WARM_MAX_ALPHA`` at ``vmax``;
    negative values in a faint cool blue (opacity up to ``_COOL_MAX_ALPHA`` at ``-vmax``)."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    vmax = float(vmax) if vmax and math.isfinite(vmax) and vmax > 0 else 1.0
    t = np.clip(m / vmax, -1.0, 1.0)
    pos, neg = np.clip(t, 0.0, 1.0), np.clip(-t, 0.0, 1.0)
    rgba = np.zeros(m.shape + (4,), dtype=np.float32)
    for c in range(3):
        rgba[..., c] = np.interp(pos, _WARM_STOPS, _WARM_RGB[:, c]) / 255.0
    is_neg = neg > 0
    rgba[is_neg, :3] = _COOL_RGB / 255.0
    rgba[..., 3] = np.where(is_neg, _COOL_MAX_ALPHA * neg, _WARM_MAX_ALPHA * np.sqrt(pos))
    return rgba


def _resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size`` = (width, height)."""
    if m.shape[::-1] == tuple(size):
        return m.astype(np.float32, copy=False)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(m, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR), dtype=np.float32
    )


def overlay_typicality(img: Image.Image, m: np.ndarray, vmax: float | None = None) -> Image.Image:
    """The image with its typicality map (resized bilinearly to the image size) blended on top."""
    img = _rgb(img)
    mm = _resize_map(np.nan_to_num(np.asarray(m, dtype=np.float32)), img.size)
    if vmax is None:
        vmax = _robust_vmax([mm])
    rgba = colorize_typicality(mm, vmax)
    base = np.asarray(img, dtype=np.float32) / 255.0
    a = rgba[..., 3:4]
    out = base * (1.0 - a) + rgba[..., :3] * a
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _robust_vmax(maps: list[np.ndarray]) -> float:
    """99th percentile of the positive values (falls back to the largest |value|, then 1)."""
    pos = [m[m > 0].ravel() for m in maps if m is not None]
    pos = [p for p in pos if p.size]
    if pos:
        v = float(np.percentile(np.concatenate(pos), 99))
        if v > 0:
            return v
    absmax = max((float(np.abs(m).max()) for m in maps if m is not None and m.size), default=0.0)
    return absmax if absmax > 0 else 1.0


def _display_image(img: Image.Image) -> Image.Image:
    if max(img.size) > HEATMAP_MAX_SIDE:
        img = img.copy()
        img.thumbnail((HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE), Image.Resampling.BILINEAR)
    return img


# --------------------------------------------------------------------------- svg curve


def loss_curve_svg(
    steps: np.ndarray,
    loss: np.ndarray,
    *,
    width: int = 760,
    height: int = 280,
    max_points: int = MAX_CURVE_POINTS,
) -> str:
    """An inline SVG of loss vs step: the raw polyline (class ``raw``), a moving average over it
    (class ``smooth``), axis labels and min/max ticks. A log y axis is used when the loss is
    positive and spans more than a factor of 20. Non-finite points are dropped; logs longer
    than ``max_points`` are strided (the last point is always kept)."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(steps) & np.isfinite(loss)
    steps, loss = steps[ok], loss[ok]
    if steps.size == 0:
        return ""
    order = np.argsort(steps, kind="stable")
    steps, loss = steps[order], loss[order]
    n = steps.size
    window = min(200, max(3, n // 20)) if n >= 5 else 1
    smooth = pd.Series(loss).rolling(window, center=True, min_periods=1).mean().to_numpy()
    if n > max_points:
        idx = np.unique(np.append(np.linspace(0, n - 1, max_points).astype(int), n - 1))
        steps, loss, smooth = steps[idx], loss[idx], smooth[idx]

    log_y = bool(loss.min() > 0 and loss.max() / loss.min() > 20)
    ty = np.log10 if log_y else (lambda a: a)
    lo_v, hi_v = float(loss.min()), float(loss.max())
    y_lo, y_hi = float(ty(lo_v)), float(ty(hi_v))
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    s_lo, s_hi = float(steps.min()), float(steps.max())

    left, right, top, bottom = 70, 18, 14, 46
    pw, ph = width - left - right, height - top - bottom

    def px(s: np.ndarray) -> np.ndarray:
        return left + (np.full_like(s, 0.5) if s_hi == s_lo else (s - s_lo) / (s_hi - s_lo)) * pw

    def py(v: np.ndarray) -> np.ndarray:
        return top + (1.0 - (ty(v) - y_lo) / (y_hi - y_lo)) * ph

    def points(xs: np.ndarray, ys: np.ndarray) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px(xs), py(ys)))

    x_axis_y = top + ph
    parts = [
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="training loss curve">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfbfa" stroke="#c9ccd1"/>',
        f'<polyline class="raw" fill="none" stroke="#9ab8d8" stroke-width="1" points="{points(steps, loss)}"/>',
    ]
    if n >= 5 and window > 1:
        parts.append(
            f'<polyline class="smooth" fill="none" stroke="#c0392b" stroke-width="2" '
            f'points="{points(steps, smooth)}"/>'
        )
    # min/max ticks
    for s in sorted({s_lo, s_hi}):
        x = float(px(np.array([s]))[0])
        parts.append(f'<line x1="{x:.1f}" y1="{x_axis_y}" x2="{x:.1f}" y2="{x_axis_y + 5}" stroke="#555"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{x_axis_y + 18}" text-anchor="middle" class="tick">{_esc(_fmt_num(s))}</text>'
        )
    for v in sorted({lo_v, hi_v}):
        y = float(py(np.array([v]))[0])
        parts.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#555"/>')
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_esc(_fmt_num(v))}</text>'
        )
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 8}" text-anchor="middle" class="axis">step</text>')
    ylabel = "loss (log scale)" if log_y else "loss"
    parts.append(
        f'<text transform="translate(16 {top + ph / 2:.0f}) rotate(-90)" text-anchor="middle" class="axis">'
        f"{ylabel}</text>"
    )
    if n >= 5 and window > 1:
        parts.append(
            f'<text x="{left + pw - 6}" y="{top + 16}" text-anchor="end" class="legend">'
            f'<tspan fill="#7d9fc4">— raw</tspan>  <tspan fill="#c0392b">— moving average ({window})</tspan></text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- sections

_CSS = """
:root { --fg:#1d2430; --muted:#5d6673; --line:#dde0e4; --bg:#f5f5f2; --card:#fff; --accent:#b03a2e; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 60px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px; margin: 18px 0; }
a { color: #1f5fa8; text-decoration: none; } a:hover { text-decoration: underline; }
.sub { color: var(--muted); margin: 0 0 8px; }
nav.toc { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; margin: 14px 0; }
nav.toc .toc-main { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: baseline; }
nav.toc .toc-labels { display: flex; gap: 10px; align-items: baseline; margin-top: 6px; }
nav.toc .toc-labels > span { color: var(--muted); }
nav.toc ol { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px 8px; counter-reset: lab; }
nav.toc li { counter-increment: lab; background: #f0f2f5; border-radius: 4px; padding: 1px 8px; overflow-wrap: anywhere; }
nav.toc li::before { content: counter(lab) ". "; color: var(--muted); font-size: 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 10px; margin-bottom: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; background: #fafafa; }
.card .v { font-size: 20px; font-weight: 600; overflow-wrap: anywhere; }
.card .k { color: var(--muted); font-size: 12px; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 18px; align-items: start; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
.bar { display: inline-block; height: 9px; background: #e07b39; border-radius: 2px; vertical-align: middle; }
.empty { color: var(--muted); font-style: italic; }
.element { display: grid; grid-template-columns: 130px 1fr; gap: 12px; padding: 10px 0; border-top: 1px solid var(--line); }
.element:first-of-type { border-top: none; }
.meta .rank { font-size: 18px; font-weight: 700; }
.meta div { color: var(--muted); font-size: 12px; }
.crops { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; }
.crops figure { margin: 0; }
.crops img { display: block; height: 96px; width: auto; image-rendering: pixelated; border: 1px solid var(--line); }
.crops figcaption { font-size: 11px; color: var(--muted); text-align: center; }
.heatmaps { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 14px; }
.heatmaps figure { margin: 0; }
.heatmaps .pair { position: relative; }
.heatmaps img { display: block; width: 100%; height: auto; image-rendering: pixelated; border-radius: 4px; }
.heatmaps img.orig { position: absolute; inset: 0; opacity: 0; transition: opacity .15s; }
.heatmaps .pair:hover img.orig { opacity: 1; }
.heatmaps figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; overflow-wrap: anywhere; }
.missing { display: flex; align-items: center; justify-content: center; height: 96px; min-width: 96px;
  border: 1px dashed var(--line); color: var(--muted); font-size: 11px; padding: 4px; }
.legend-ramp { display: inline-block; width: 160px; height: 10px; vertical-align: middle; border-radius: 2px;
  background: linear-gradient(to right, rgba(49,130,189,.35), rgba(255,255,255,0) 33%, rgba(255,237,100,.4) 45%,
  #fe9929 70%, #e31a1c 88%, #960026); border: 1px solid var(--line); }
svg.curve { max-width: 100%; height: auto; font-size: 12px; }
svg .tick { fill: #444; font-size: 11px; } svg .axis { fill: #333; font-size: 12px; } svg .legend { font-size: 12px; }
details summary { cursor: pointer; color: var(--muted); }
.ct td.n { min-width: 36px; }
"""


def _summary_section(data: ReportData) -> str:
    summary = data.summary if isinstance(data.summary, dict) else {}
    out = ['<section id="summary"><h2>Run summary</h2>']
    known = ["images", "ok", "rejected", "labels", "unlabeled", "missing_files", "device"]
    names = {
        "images": "images",
        "ok": "images ok",
        "rejected": "rejected",
        "labels": "labels",
        "unlabeled": "unlabeled",
        "missing_files": "missing files",
        "device": "device",
    }
    cards = []
    for key in known:
        if key in summary and summary[key] is not None:
            v = summary[key]
            val = _fmt_num(v) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)
            cards.append(f'<div class="card"><div class="v">{_esc(val)}</div><div class="k">{_esc(names[key])}</div></div>')
    handled = set(known) | {"rejected_by_reason", "timings", "config", "notes"}
    others = [(k, v) for k, v in summary.items() if k not in handled and not isinstance(v, (dict, list, tuple))]
    if cards:
        out.append('<div class="cards">' + "".join(cards) + "</div>")
    if not summary:
        out.append(_empty("No run summary was recorded."))

    blocks = []
    timings = summary.get("timings")
    if isinstance(timings, dict) and timings:
        vals = {}
        for k, v in timings.items():
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                vals[k] = float("nan")
        total = sum(v for v in vals.values() if math.isfinite(v))
        rows = []
        for k, v in vals.items():
            w = 0 if not (math.isfinite(v) and total > 0) else max(1, round(120 * v / total))
            rows.append([_esc(k), f'<span class="n">{_esc(_fmt_seconds(v))}</span>', f'<span class="bar" style="width:{w}px"></span>'])
        rows.append(["<b>total</b>", f"<b>{_esc(_fmt_seconds(total))}</b>", ""])
        blocks.append("<div><h3>Timings</h3>" + _table(["stage", "time", ""], rows) + "</div>")
    else:
        blocks.append("<div><h3>Timings</h3>" + _empty("No timings recorded.") + "</div>")

    by_reason = summary.get("rejected_by_reason")
    if isinstance(by_reason, dict) and by_reason:
        rows = [
            [_esc(k), _esc(_fmt_num(v))]
            for k, v in sorted(by_reason.items(), key=lambda kv: -float(kv[1]) if _isnum(kv[1]) else 0)
        ]
        blocks.append("<div><h3>Rejections by reason</h3>" + _table(["reason", "count"], rows) + "</div>")
    elif _has(data.rejected, ["reason"]):
        counts = data.rejected["reason"].astype(str).value_counts()
        rows = [[_esc(k), _esc(_fmt_num(int(v)))] for k, v in counts.items()]
        blocks.append("<div><h3>Rejections by reason</h3>" + _table(["reason", "count"], rows) + "</div>")
    else:
        blocks.append("<div><h3>Rejections by reason</h3>" + _empty("No rejections.") + "</div>")

    notes = summary.get("notes")
    if isinstance(notes, (list, tuple)) and notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        blocks.append(f"<div><h3>Input warnings and decisions</h3><ul>{items}</ul></div>")

    if others:
        rows = [[_esc(k), _esc(_fmt_num(v) if _isnum(v) else v)] for k, v in others]
        blocks.append("<div><h3>Other facts</h3>" + _table(["key", "value"], rows) + "</div>")
    out.append('<div class="grid2">' + "".join(blocks) + "</div>")

    config = summary.get("config")
    if isinstance(config, dict) and config:
        rows = [[_esc(k), _esc(v)] for k, v in _flatten(config)]
        out.append("<details><summary>Configuration</summary>" + _table(["setting", "value"], rows) + "</details>")
    out.append("</section>")
    return "".join(out)


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            rows.extend(_flatten(v, key))
        else:
            rows.append((key, "null" if v is None else str(v)))
    return rows


def _crop_figure(cache: _Cache, row: Any) -> str:
    image_id = str(row["image_id"])
    try:
        typ = float(row["typicality"])
    except (TypeError, ValueError, KeyError):
        typ = float("nan")
    tip = _esc(f"{image_id} · typicality {_fmt_num(typ)}")
    img = cache.image(image_id)
    if img is None:
        return f'<figure><div class="missing" title="{tip}">image unavailable</div></figure>'
    try:
        crop, _ = patch_crop(img, (row["x0"], row["y0"], row["x1"], row["y1"]))
    except Exception:  # noqa: BLE001 - a malformed box is shown as missing
        return f'<figure><div class="missing" title="{tip}">bad patch box</div></figure>'
    return (
        f'<figure><img class="crop" src="{_png_uri(crop)}" width="{crop.width}" height="{crop.height}" '
        f'alt="{tip}" title="{tip}"><figcaption>{_esc(_fmt_num(typ, 3))}</figcaption></figure>'
    )


def _label_section(
    data: ReportData,
    cache: _Cache,
    label: str,
    index: int,
    anchor: str,
    vmax: float,
    heat_ids: list[tuple[str, float]],
    elements_per_label: int,
    patches_per_element: int,
) -> str:
    out = [f'<section class="label" id="{anchor}"><h2>{_esc(label)}</h2>']
    facts = []
    if _has(data.typicality, ["label", "image_id"]):
        sub = data.typicality[data.typicality["label"].astype(str) == label]
        facts.append(f"{_fmt_num(sub['image_id'].nunique())} images")
        if "typicality" in sub and len(sub):
            facts.append(f"median image typicality {_fmt_num(float(pd.to_numeric(sub['typicality'], errors='coerce').median()))}")
    lp = pd.DataFrame()
    if _has(data.patches, ["label", "image_id", "x0", "y0", "x1", "y1"]):
        lp = data.patches[data.patches["label"].astype(str) == label]
        facts.append(f"{_fmt_num(len(lp))} patches")
    le = pd.DataFrame()
    if _has(data.elements, ["label", "element"]):
        le = data.elements[data.elements["label"].astype(str) == label]
        if "rank" in le.columns:
            le = le.sort_values("rank", kind="stable")
        facts.append(f"{_fmt_num(len(le))} elements")
    if facts:
        out.append(f'<p class="sub">{_esc(" · ".join(facts))}</p>')

    out.append("<h3>Visual elements</h3>")
    if le.empty:
        out.append(_empty("No visual elements were mined for this label."))
    else:
        shown = le.head(elements_per_label)
        if len(le) > len(shown):
            out.append(f'<p class="sub">{_esc(f"Showing the top {len(shown)} of {len(le)} elements.")}</p>')
        have_members = not lp.empty and "element" in lp.columns
        for i, (_, e) in enumerate(shown.iterrows()):
            rank = e.get("rank", i)
            meta = [f'<div class="rank">#{_esc(_fmt_num(_int_or(rank, i) + 1))}</div>']
            if "score" in e:
                meta.append(f"<div>score {_esc(_fmt_num(e['score']))}</div>")
            if "size" in e:
                meta.append(f"<div>{_esc(_fmt_num(e['size']))} patches</div>")
            meta.append(f"<div>element {_esc(_fmt_num(e['element']))}</div>")
            crops = []
            if have_members:
                members = lp[pd.to_numeric(lp["element"], errors="coerce") == _int_or(e["element"], -(10**9))]
                if "typicality" in members.columns:
                    members = members.assign(_t=pd.to_numeric(members["typicality"], errors="coerce")).sort_values(
                        "_t", ascending=False, kind="stable", na_position="last"
                    )
                for _, p in members.head(patches_per_element).iterrows():
                    crops.append(_crop_figure(cache, p))
            body = "".join(crops) if crops else _empty("No member patches recorded.")
            out.append(
                f'<div class="element"><div class="meta">{"".join(meta)}</div><div class="crops">{body}</div></div>'
            )

    out.append("<h3>Most typical images</h3>")
    if not heat_ids:
        out.append(_empty("No image typicality scores for this label."))
    else:
        figs = []
        for image_id, score in heat_ids:
            cap = f"{_esc(image_id)}<br>typicality {_esc(_fmt_num(score))}"
            img = cache.image(image_id)
            if img is None:
                figs.append(f'<figure><div class="missing">image unavailable</div><figcaption>{cap}</figcaption></figure>')
                continue
            m = cache.map(image_id)
            disp = _display_image(img)
            if m is None:
                figs.append(
                    f'<figure><div class="pair"><img src="{_png_uri(disp)}" alt="{_esc(image_id)}" title="{_esc(image_id)}">'
                    f"</div><figcaption>{cap} (no map)</figcaption></figure>"
                )
                continue
            over = overlay_typicality(disp, m, vmax)
            figs.append(
                f'<figure><div class="pair"><img class="over" src="{_png_uri(over)}" alt="{_esc(image_id)}">'
                f'<img class="orig" src="{_png_uri(disp)}" alt="{_esc(image_id)}" title="{_esc(image_id)}"></div>'
                f"<figcaption>{cap}</figcaption></figure>"
            )
        out.append('<div class="heatmaps">' + "".join(figs) + "</div>")
    out.append("</section>")
    return "".join(out)


def _int_or(v: Any, default: int) -> int:
    try:
        f = float(v)
        return int(f) if math.isfinite(f) else default
    except (TypeError, ValueError):
        return default


def _collection_section(data: ReportData, labels: list[str]) -> str:
    out = ['<section id="collection"><h2>The collection</h2>']
    blocks = []
    if _has(data.cluster_metrics, ["metric", "value"]):
        rows = [
            [_esc(r["metric"]), f'<span class="n">{_esc(_fmt_num(r["value"]))}</span>']
            for _, r in data.cluster_metrics.iterrows()
        ]
        blocks.append("<div><h3>Cluster metrics</h3>" + _table(["metric", "value"], rows) + "</div>")
    else:
        blocks.append("<div><h3>Cluster metrics</h3>" + _empty("No cluster metrics.") + "</div>")

    has_clusters = _has(data.clusters, ["cluster"])
    if has_clusters:
        cl = data.clusters
        sizes = cl["cluster"].value_counts().sort_index()
        biggest = max(1, int(sizes.max()))
        dist = None
        if "distance" in cl.columns:
            dist = pd.to_numeric(cl["distance"], errors="coerce").groupby(cl["cluster"]).mean()
        rows = []
        for c, n in sizes.items():
            row = [_esc(_fmt_num(c)), f'<span class="n">{_esc(_fmt_num(int(n)))}</span>']
            if dist is not None:
                row.append(_esc(_fmt_num(dist.get(c, float("nan")), 3)))
            row.append(f'<span class="bar" style="width:{max(1, round(140 * int(n) / biggest))}px"></span>')
            rows.append(row)
        header = ["cluster", "images"] + (["mean distance"] if dist is not None else []) + [""]
        blocks.append("<div><h3>Cluster sizes</h3>" + _table(header, rows) + "</div>")
    else:
        blocks.append("<div><h3>Cluster sizes</h3>" + _empty("No clustering results.") + "</div>")
    out.append('<div class="grid2">' + "".join(blocks) + "</div>")

    if has_clusters and "label" in data.clusters.columns:
        cl = data.clusters[data.clusters["label"].notna()]
        if not cl.empty:
            ct = pd.crosstab(cl["label"].astype(str), cl["cluster"])
            order = [lab for lab in labels if lab in ct.index]
            ct = ct.reindex(order + sorted(set(ct.index) - set(order)))
            cols = list(ct.columns)
            header = ["label \\ cluster"] + [f'<span class="n">{_esc(_fmt_num(c))}</span>' for c in cols] + ["total"]
            rows = []
            for lab, r in ct.iterrows():
                total = int(r.sum())
                cells = [_esc(lab)]
                for c in cols:
                    v = int(r[c])
                    a = 0 if total == 0 else 0.08 + 0.6 * v / total if v else 0
                    cells.append(f'<span class="n" style="display:block;background:rgba(224,123,57,{a:.2f})">{v}</span>')
                cells.append(f"<b>{total}</b>")
                rows.append(cells)
            rows.append(["<b>total</b>"] + [f"<b>{int(ct[c].sum())}</b>" for c in cols] + [f"<b>{int(ct.values.sum())}</b>"])
            out.append("<h3>Labels × clusters</h3>" + _table(header, rows, cls="ct"))
        else:
            out.append("<h3>Labels × clusters</h3>" + _empty("No labelled images in the clustering."))
    out.append("</section>")
    return "".join(out)


def _training_section(data: ReportData) -> str:
    out = ['<section id="training"><h2>Training</h2>']
    svg = ""
    tr = data.training
    if _has(tr, ["step", "loss"]):
        steps = pd.to_numeric(tr["step"], errors="coerce").to_numpy(dtype=np.float64)
        loss = pd.to_numeric(tr["loss"], errors="coerce").to_numpy(dtype=np.float64)
        svg = loss_curve_svg(steps, loss)
        if svg:
            ok = np.isfinite(steps) & np.isfinite(loss)
            facts = [f"{_fmt_num(int(ok.sum()))} logged steps", f"last loss {_fmt_num(loss[ok][np.argmax(steps[ok])])}",
                     f"min loss {_fmt_num(loss[ok].min())}"]
            if "lr" in tr.columns:
                lr = pd.to_numeric(tr["lr"], errors="coerce").dropna()
                if len(lr):
                    facts.append(f"final lr {_fmt_num(lr.iloc[-1], 3)}")
            if "seconds" in tr.columns:
                sec = pd.to_numeric(tr["seconds"], errors="coerce").dropna()
                if len(sec):
                    facts.append(f"{_fmt_seconds(sec.max())} elapsed")
            out.append(f'<p class="sub">{_esc(" · ".join(facts))}</p>' + svg)
    if not svg:
        out.append(_empty("No training log."))
    out.append("</section>")
    return "".join(out)


def _rejected_section(data: ReportData) -> str:
    out = ['<section id="rejected"><h2>Rejected inputs</h2>']
    rj = data.rejected
    if isinstance(rj, pd.DataFrame) and not rj.empty:
        n = len(rj)
        out.append(f'<p class="sub">{_esc(f"{n:,} rejected input" + ("s" if n != 1 else ""))}'
                   + (f"{_esc(f'; the first {MAX_REJECTED_ROWS} are listed')}" if n > MAX_REJECTED_ROWS else "")
                   + "</p>")
        cols = [c for c in ("source", "reason") if c in rj.columns] or [str(c) for c in rj.columns]
        rows = [[_esc(r[c]) for c in cols] for _, r in rj.head(MAX_REJECTED_ROWS).iterrows()]
        out.append(_table([_esc(c) for c in cols], rows))
    else:
        out.append(_empty("No inputs were rejected."))
    out.append("</section>")
    return "".join(out)


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
    cache = _Cache(data.load_image, data.load_map)
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
    maps = []
    for ids in heat.values():
        for image_id, _ in ids:
            m = cache.map(image_id)
            if m is not None:
                maps.append(m)
    vmax = _robust_vmax(maps)

    anchors = label_anchors(labels)
    sections = [("summary", "Run summary"), ("glance", "At a glance"), *[(a, _esc(t)) for a, t, _ in data.extra_sections],
                ("collection", "The collection"), ("training", "Training"), ("rejected", "Rejected inputs")]
    toc = '<div class="toc-main"><b>Contents</b>' + "".join(f'<a href="#{a}">{t}</a>' for a, t in sections) + "</div>"
    if labels:
        toc += '<div class="toc-labels"><span>Labels</span><ol>' + "".join(
            f'<li><a href="#{a}">{_esc(lab)}</a></li>' for a, lab in zip(anchors, labels)
        ) + "</ol></div>"

    body = [_summary_section(data), map_section(
        data.collection_map, data.clusters, data.conditioning, cache.image, method=data.map_method,
        interactive_max=map_interactive_max, thumbnails_per_cluster=map_thumbnails_per_cluster,
    )]
    if labels:
        for i, (lab, anchor) in enumerate(zip(labels, anchors)):
            body.append(
                _label_section(data, cache, lab, i, anchor, vmax, heat.get(lab, []), elements_per_label, patches_per_element)
            )
    else:
        body.append('<section id="labels"><h2>Labels</h2>' + _empty("No labels.") + "</section>")
    body += [html_ for _, _, html_ in data.extra_sections]
    body += [_collection_section(data, labels), _training_section(data), _rejected_section(data)]

    legend = (
        '<p class="sub">Crops: the patch (green box) with half a patch of context; number = patch typicality. '
        'Heat maps: <span class="legend-ramp"></span> blue = label hurts denoising, warm = typical of the label '
        f"(scale up to {_esc(_fmt_num(vmax, 3))}); hover an image to see it without the map.</p>"
    )
    title = _esc(data.title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}{MAP_CSS}</style></head><body><main>"
        f'<h1>{title}</h1>{legend}<nav class="toc">{toc}</nav>'
        + "".join(body)
        + "</main></body></html>\n"
    )
