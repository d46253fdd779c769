"""Decoding untrusted image bytes into RGB, with precise reasons for rejection."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageRejected",
    "decode_image",
    "encode_png",
    "image_id",
    "reason_kind",
    "square_tiles",
    "to_working",
    "working_size",
]


class ImageRejected(ValueError):
    """The bytes are not a usable image; `reason` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason, for counting: reasons are written ``kind: detail``."""
    return reason.split(":", 1)[0].strip()


def image_id(data: bytes) -> str:
    """Stable id of an image: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def decode_image(data: bytes, *, max_pixels: int, min_side: int = 1, max_aspect: float | None = None) -> Image.Image:
    """Decode `data` into an RGB image, EXIF orientation applied; first frame of animations and
    multi-page files.

    Raises `ImageRejected` for empty or non-image data, truncated or corrupt files, images of
    more than `max_pixels` pixels (checked from the header, before decoding: no bomb is ever
    decompressed), images with a side shorter than `min_side` and images whose long side is
    more than `max_aspect` times their short side (None: any shape). Every reason reads
    ``kind: detail`` (see `reason_kind`).
    """
    if not data:
        raise ImageRejected("empty file: 0 bytes")
    img: Image.Image | None = None
    try:
        with warnings.catch_warnings():
            # Our own `max_pixels` check below replaces Pillow's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected(
                    f"too many pixels: {w}x{h} = {w * h} > data.max_pixels = {max_pixels} (possible decompression bomb)"
                )
            if w < 1 or h < 1:
                raise ImageRejected(f"empty image: {w}x{h}")
            if min(w, h) < min_side:
                raise ImageRejected(f"too small: {w}x{h}, a side is shorter than data.min_side = {min_side} pixels")
            if max_aspect is not None and max(w, h) > max_aspect * min(w, h):
                raise ImageRejected(
                    f"too elongated: {w}x{h}, aspect ratio {max(w, h) / min(w, h):.1f} > data.max_aspect = {max_aspect:g}"
                )
            img.seek(0)
            img.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image: {_sniff(data)}") from None
    except Image.DecompressionBombError as err:
        raise ImageRejected(
            f"too many pixels: {err} (data.max_pixels = {max_pixels}; possible decompression bomb)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        kind = getattr(img, "format", None) or _magic(data) or "image"
        raise ImageRejected(f"truncated or corrupt: {kind} data, {err}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:
        pass
    return _to_rgb(img)


_MAGIC = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _magic(data: bytes) -> str | None:
    """The format announced by the first bytes, when Pillow gave up before naming it."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for head, name in _MAGIC if data.startswith(head)), None)


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "the file is an HTML page"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in data[:256]):
        return "the file is text"
    return "unknown format"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def working_size(
    width: int, height: int, resolution: int, resize: str = "square", multiple: int = 8
) -> tuple[int, int]:
    """(width, height) of the working image of a `width` x `height` original.

    square: `resolution` x `resolution` (the aspect ratio is not kept). short_side: the short side
    becomes `resolution` and the long side keeps the aspect ratio, rounded to the nearest multiple
    of `multiple` (at least `multiple`): the model's downsampling factor, 8 for a VAE's latents,
    2^(levels - 1) for the small pixel UNet. A square original gives `resolution` x `resolution`
    under both policies. Boxes map back to the original exactly by scaling each axis by
    original / working size.
    """
    if resize == "square":
        return resolution, resolution
    if resize != "short_side":
        raise ValueError(f"resize must be 'square' or 'short_side', got {resize!r}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    scale = resolution / min(width, height)
    snap = lambda side: max(multiple, int(round(side * scale / multiple)) * multiple)  # noqa: E731
    return (resolution, snap(height)) if width <= height else (snap(width), resolution)


def to_working(img: Image.Image, resolution: int, resize: str = "square", multiple: int = 8) -> Image.Image:
    """Resize to the working size (see `working_size`; area-averaging when shrinking)."""
    size = working_size(img.width, img.height, resolution, resize, multiple)
    if img.size == size:
        return img
    shrink = img.width >= size[0] and img.height >= size[1]
    return img.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)


def square_tiles(image: np.ndarray, overlap: float = 0.5) -> list[np.ndarray]:
    """Square crops of `image` (H, W, ...) covering it: side min(H, W), along the long side from
    one end to the other at a stride of (1 - overlap) x side (the last crop touches the far end).
    A square image is its own single tile. Views, not copies."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    h, w = image.shape[:2]
    side, long = min(h, w), max(h, w)
    stride = max(1, int(round(side * (1 - overlap))))
    starts = list(range(0, long - side + 1, stride))
    if starts[-1] != long - side:
        starts.append(long - side)
    return [image[:, s : s + side] if w > h else image[s : s + side] for s in starts]


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
