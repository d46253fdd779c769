"""A zoo of messy inputs, generated in code (no binary blobs in the repository).

`write_zoo(root)` writes a flat image folder and a labels CSV covering every item of the
issue's "Image files" and "Labels" lists, and returns the cases with the outcome each must have:
`expect` is "ok" or the kind of rejection (the text before ':' in the manifest's reason).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gcmodels.data.synthetic import motif_dataset

# Labels that must stay data: HTML, quotes, commas, slashes, unicode, path climbing.
L_HTML = 'comma, "quote" <script>alert(1)</script>'
L_PATH = "../x"
L_UNI = "slash/ünïcode ☕"  # a label with a single image
L_LOST = "lost/../../label"  # only given to files that are rejected
LABELS = (L_HTML, L_PATH, L_UNI, L_LOST)


@dataclass
class Case:
    name: str  # file name in the image folder (None: a label row naming a missing file)
    data: bytes | None
    label: str | None  # label row written for it (None: no row)
    expect: str  # "ok" or the reason kind
    what: str  # the issue item it covers
    size: tuple[int, int] | None = None  # expected (width, height) in the manifest for "ok" cases


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A few dozen bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def cases() -> list[Case]:
    items = motif_dataset(n_per_label=6, size=24, labels=("circle", "cross"), seed=5)
    circle = [it.image for it in items if it.label == "circle"]
    cross = [it.image for it in items if it.label == "cross"]
    out: list[Case] = []
    for i in range(4):
        out.append(Case(f"plain_a{i}.png", _save(circle[i], "PNG"), L_HTML, "ok", "clean image", (24, 24)))
        out.append(Case(f"plain_b{i}.png", _save(cross[i], "PNG"), L_PATH, "ok", "clean image", (24, 24)))
    gray16 = Image.fromarray(np.asarray(circle[4].convert("L"), np.uint16) * 257)
    out.append(Case("gray16.png", _save(gray16, "PNG"), L_HTML, "ok", "16-bit PNG", (24, 24)))
    pal = cross[4].convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out.append(
        Case(
            "palette_alpha.png", _save(pal, "PNG", transparency=0), L_PATH, "ok", "palette with transparency", (24, 24)
        )
    )
    out.append(
        Case("grayscale.jpg", _save(circle[5].convert("L"), "JPEG", quality=95), L_HTML, "ok", "grayscale", (24, 24))
    )
    rgba = cross[5].convert("RGBA")
    rgba.putalpha(200)
    out.append(Case("rgba.png", _save(rgba, "PNG"), L_PATH, "ok", "RGBA", (24, 24)))
    out.append(
        Case("cmyk.jpg", _save(circle[4].convert("CMYK"), "JPEG", quality=95), L_HTML, "ok", "CMYK JPEG", (24, 24))
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    wide = cross[1].resize((40, 24))
    out.append(
        Case(
            "exif_rotated.jpg",
            _save(wide, "JPEG", exif=exif.tobytes(), quality=95),
            L_PATH,
            "ok",
            "EXIF-rotated JPEG",
            (24, 40),
        )
    )
    frames = [circle[0].rotate(90 * k) for k in range(3)]
    out.append(
        Case(
            "animated.gif",
            _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
            L_HTML,
            "ok",
            "animated GIF",
            (24, 24),
        )
    )
    out.append(
        Case(
            "multipage.tiff",
            _save(cross[2].rotate(180), "TIFF", save_all=True, append_images=[cross[3].copy()]),
            L_PATH,
            "ok",
            "multi-page TIFF",
            (24, 24),
        )
    )
    out.append(Case("UPPER.PNG", _save(circle[1].rotate(90), "PNG"), L_HTML, "ok", "upper-case extension", (24, 24)))
    out.append(
        Case("single.png", _save(circle[2].rotate(270), "PNG"), L_UNI, "ok", "a label with a single image", (24, 24))
    )
    out.append(
        Case(
            "ünï <b>code<b> \"q\" & 'x'.png",
            _save(cross[1].rotate(270), "PNG"),
            L_PATH,
            "ok",
            "a file name with HTML, quotes, unicode",
            (24, 24),
        )
    )
    out.append(Case("nolabel.png", _save(cross[0].rotate(90), "PNG"), None, "ok", "an image with no label", (24, 24)))
    out.append(Case("blank_label.png", _save(cross[0].rotate(270), "PNG"), "   ", "ok", "a whitespace label", (24, 24)))

    truncated_png = _save(circle[3].rotate(90), "PNG")
    truncated_jpg = _save(cross[3].rotate(90), "JPEG", quality=95)
    html = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
    out += [
        Case("zero.png", b"", L_HTML, "empty file", "zero bytes"),
        Case("trunc.png", truncated_png[: len(truncated_png) // 2], L_HTML, "truncated or corrupt", "truncated PNG"),
        Case("trunc.jpg", truncated_jpg[: len(truncated_jpg) // 2], L_PATH, "truncated or corrupt", "truncated JPEG"),
        Case("text.png", b"filename,label\na.png,cat\n", L_PATH, "not an image", "a text file named .png"),
        Case(
            "<img src=x onerror=alert(2)>.png",
            b"<script>alert(2)</script>",
            L_PATH,
            "not an image",
            "a file name with HTML",
        ),
        Case("error_page.jpg", html, L_HTML, "not an image", "an HTML error page saved as .jpg"),
        Case("bomb.png", _png_bomb(30000, 30000), L_PATH, "too many pixels", "a decompression bomb"),
        Case("tiny_1x1.png", _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), L_HTML, "too small", "1x1 image"),
        Case(
            "banner.png",
            _save(Image.new("RGB", (400, 10), (200, 10, 10)), "PNG"),
            L_PATH,
            "too elongated",
            "very elongated image",
        ),
        Case("zz_dup_same.png", _save(circle[0], "PNG"), L_HTML, "duplicate", "duplicate under another name"),
        Case(
            "zz_dup_other.png",
            _save(cross[0], "PNG"),
            L_HTML,
            "duplicate with another label",
            "duplicate with another label",
        ),
        Case("lost_a.png", b"", L_LOST, "empty file", "label with no image after rejection"),
        Case("lost_b.png", b"\x00" * 10 + b"garbage", L_LOST, "not an image", "label with no image after rejection"),
        Case(None, None, L_PATH, "missing", "labels naming a file that does not exist"),
    ]
    return out


def write_zoo(root: Path) -> dict:
    """Write the zoo under `root` (images/ and labels.csv); return the cases and the paths."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    zoo = cases()
    for case in zoo:
        if case.name is not None:
            (images / case.name).write_bytes(case.data)
        if case.label is not None:
            rows.append({"filename": case.name or "ghost.png", "label": case.label})
    labels = root / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return {"images": images, "labels": labels, "cases": zoo}


def expected_kinds(zoo: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in zoo:
        if case.name is not None and case.expect != "ok":
            counts[case.expect] = counts.get(case.expect, 0) + 1
    return counts
