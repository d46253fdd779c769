"""The report's image processing: patch crops with their box, typicality heat maps over the image,
thumbnails, and data URIs (every image of the page is embedded, so it opens with no server)."""

from __future__ import annotations

import base64
import io
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BOX_COLOR",
    "CROP_HEIGHT",
    "HEATMAP_MAX_SIDE",
    "IMAGE_CACHE_PIXELS",
    "THUMB_SIDE",
    "ImageCache",
    "colorize_typicality",
    "display_image",
    "jpeg_thumbnail",
    "overlay_typicality",
    "patch_crop",
    "png_uri",
    "robust_vmax",
    "scaled_to_height",
    "to_rgb",
]

#: colour of the patch box drawn on every crop (bright green, visible on most images)
BOX_COLOR: tuple[int, int, int] = (0, 255, 0)
#: target display height of a patch crop, in pixels
CROP_HEIGHT = 96
#: largest side of an embedded heat map image (originals above are downscaled)
HEATMAP_MAX_SIDE = 320
#: total pixels of decoded originals kept in memory during one render (LRU beyond that)
IMAGE_CACHE_PIXELS = 200_000_000
#: side of the collection map's thumbnails (per cluster, and on hover)
THUMB_SIDE = 64


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB without a copy when it already is (convert() always copies); alpha over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def png_uri(img: Image.Image) -> str:
    """The image as a base64 PNG data URI."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_thumbnail(load_image: Callable[[str], Image.Image], image_id: str) -> str | None:
    """A THUMB_SIDE-px JPEG data URI of the image (about 2 kB: a thousand fit in a few MB of
    HTML), or None if it cannot be loaded."""
    try:
        img = load_image(image_id)
        if img is None:
            return None
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:
        return None


def scaled_to_height(img: Image.Image, height: int = CROP_HEIGHT) -> Image.Image:
    """Small images upscaled by an integer factor (NEAREST) to about `height` pixels tall."""
    scale = max(1, round(height / max(1, img.height)))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def display_image(img: Image.Image) -> Image.Image:
    """The image downscaled to at most HEATMAP_MAX_SIDE on its long side (a copy), or itself."""
    if max(img.size) > HEATMAP_MAX_SIDE:
        img = img.copy()
        img.thumbnail((HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE), Image.Resampling.BILINEAR)
    return img


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
    img = to_rgb(img)
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
    """Bilinear resize of a float map (h, w) to ``size`` = (width, height)."""
    if m.shape[::-1] == tuple(size):
        return m.astype(np.float32, copy=False)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(m, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )


def robust_vmax(maps: list[np.ndarray]) -> float:
    """99th percentile of the positive values (falls back to the largest |value|, then 1)."""
    pos = [m[m > 0].ravel() for m in maps if m is not None]
    pos = [p for p in pos if p.size]
    if pos:
        v = float(np.percentile(np.concatenate(pos), 99))
        if v > 0:
            return v
    absmax = max((float(np.abs(m).max()) for m in maps if m is not None and m.size), default=0.0)
    return absmax if absmax > 0 else 1.0


def overlay_typicality(img: Image.Image, m: np.ndarray, vmax: float | None = None) -> Image.Image:
    """The image with its typicality map (resized bilinearly to the image size) blended on top."""
    img = to_rgb(img)
    mm = _resize_map(np.nan_to_num(np.asarray(m, dtype=np.float32)), img.size)
    if vmax is None:
        vmax = robust_vmax([mm])
    rgba = colorize_typicality(mm, vmax)
    base = np.asarray(img, dtype=np.float32) / 255.0
    a = rgba[..., 3:4]
    out = base * (1.0 - a) + rgba[..., :3] * a
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


class ImageCache:
    """Loads each image and map once per render; failures become None.

    Images are kept in an LRU cache bounded by ``max_pixels`` in total (so a collection of
    large originals cannot exhaust memory; small images are effectively all kept). Maps are
    reduced to 2-D float32 (channel mean), non-finite values set to 0."""

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
            img = None if img is None else to_rgb(img)
        except Exception:
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
            except Exception:
                self._maps[image_id] = None
        return self._maps[image_id]
