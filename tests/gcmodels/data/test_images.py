"""Tests of decoding untrusted image bytes: formats, modes, orientation, rejections."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gcmodels.data.images import ImageRejected, decode_image, encode_png, image_id, to_working

MAX = 10_000_000


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A 1-bit grayscale PNG claiming width x height, with (possibly truncated) pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    if idat:
        out += _png_chunk(b"IDAT", idat)
    return out


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageRejected) as err:
        decode_image(data, max_pixels=kw.get("max_pixels", MAX))
    assert err.value.reason == str(err.value)
    assert isinstance(err.value, ValueError)
    return err.value.reason


# ------------------------------------------------------------------ valid images
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "TIFF"])
def test_valid_images_decode_to_rgb(fmt: str) -> None:
    data = _save(_noise(64, 48), fmt)
    img = decode_image(data, max_pixels=MAX)
    assert img.mode == "RGB"
    assert img.size == (64, 48)


def test_png_pixels_are_exact() -> None:
    src = _noise(16, 8)
    img = decode_image(_save(src, "PNG"), max_pixels=MAX)
    assert np.array_equal(np.asarray(img), np.asarray(src))


# ------------------------------------------------------------------ rejections
def test_zero_bytes() -> None:
    assert "empty file" in _reason(b"")


def test_text_bytes() -> None:
    reason = _reason(b"filename,label\na.png,cat\n")
    assert reason.startswith("not an image") and "text" in reason


def test_html_page() -> None:
    page = b"  <!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>nope</body></html>"
    reason = _reason(page)
    assert reason.startswith("not an image") and "HTML" in reason


def test_binary_garbage() -> None:
    reason = _reason(bytes(range(256)) * 4)
    assert reason.startswith("not an image") and "unknown format" in reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt: str) -> None:
    data = _save(_noise(64, 64), fmt)
    reason = _reason(data[: len(data) // 2])
    assert reason.startswith("truncated or corrupt")
    assert fmt in reason


def test_huge_header_is_rejected_before_decoding() -> None:
    data = _png_header_only(30000, 30000, zlib.compress(b"\x00" * 64))  # a few bytes claiming 900 M pixels
    assert len(data) < 100
    assert "too many pixels" in _reason(data)


def test_bilevel_image_over_max_pixels() -> None:
    data = _save(Image.new("1", (4000, 4000)), "PNG")  # 16 M pixels, a few kB
    reason = _reason(data, max_pixels=MAX)
    assert reason.startswith("too many pixels")
    assert "4000x4000" in reason and str(MAX) in reason


def test_big_bilevel_png_twenty_thousand_square() -> None:
    # The data.max_pixels check and PIL's own bomb guard both say 'too many pixels'.
    data = _png_header_only(20000, 20000, zlib.compress(b"\x00" * 2501 * 4))
    assert "too many pixels" in _reason(data, max_pixels=MAX)


def test_max_pixels_above_pil_limit_is_honoured() -> None:
    # 10000 x 10000 = 100 M pixels <= max_pixels = 200 M: must not be rejected for its size.
    # (The pixel data is truncated so that a correct implementation rejects it quickly as corrupt.)
    data = _png_header_only(10000, 10000, zlib.compress(b"\x00" * 100))
    reason = _reason(data, max_pixels=200_000_000)
    assert not reason.startswith("too many pixels"), reason


def test_max_pixels_boundary() -> None:
    data = _save(Image.new("RGB", (100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    assert _reason(data, max_pixels=4999).startswith("too many pixels")


# ------------------------------------------------------------------ modes
def test_sixteen_bit_png() -> None:
    arr = np.array([[0, 65535, 32768], [257, 1000, 65535]], dtype=np.uint16)
    src = Image.fromarray(arr)
    data = _save(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode_image(data, max_pixels=MAX)
    assert img.mode == "RGB" and img.size == (3, 2)
    out = np.asarray(img)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[0, 0, 0] == 0
    assert out[0, 1, 0] == 255
    assert out[0, 2, 0] == 128
    assert out[1, 0, 0] == 1
    assert out[1, 1, 0] == 4  # 1000/65535*255 = 3.9


def test_palette_with_transparency_composited_on_white() -> None:
    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 0), 1)
    data = _save(pal, "PNG", transparency=0)  # index 0 (black) is transparent
    img = decode_image(data, max_pixels=MAX)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (255, 0, 0)


def test_rgba_composited_on_white() -> None:
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[0, 1] = (0, 0, 255, 255)  # opaque blue
    arr[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    img = decode_image(_save(Image.fromarray(arr, "RGBA"), "PNG"), max_pixels=MAX)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (0, 0, 255)
    grey = img.getpixel((2, 0))
    assert all(120 <= v <= 135 for v in grey)


def test_grayscale_alpha_composited_on_white() -> None:
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (50, 255))
    img = decode_image(_save(la, "PNG"), max_pixels=MAX)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (50, 50, 50)


def test_grayscale_to_rgb() -> None:
    g = Image.new("L", (5, 3), 77)
    img = decode_image(_save(g, "PNG"), max_pixels=MAX)
    assert img.mode == "RGB" and img.size == (5, 3)
    assert img.getpixel((4, 2)) == (77, 77, 77)


def test_cmyk_jpeg_to_rgb() -> None:
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # red
    img = decode_image(_save(cmyk, "JPEG", quality=95), max_pixels=MAX)
    assert img.mode == "RGB" and img.size == (6, 4)
    r, g, b = img.getpixel((3, 2))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied() -> None:
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    src.paste((255, 255, 255), (0, 0, 10, 20))  # white left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = _save(src, "JPEG", exif=exif.tobytes(), quality=95)
    img = decode_image(data, max_pixels=MAX)
    assert img.mode == "RGB"
    assert img.size == (20, 40)
    # after a clockwise rotation the white left quarter is on top
    assert img.getpixel((10, 2))[0] > 200 and img.getpixel((10, 37))[0] < 50


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data, max_pixels=MAX)
    assert img.mode == "RGB" and img.size == (10, 10)
    assert img.getpixel((5, 5)) == (255, 0, 0)


# ------------------------------------------------------------------ helpers
def test_image_id_is_stable_16_hex() -> None:
    a = image_id(b"hello")
    assert a == image_id(b"hello")
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    assert a == "2cf24dba5fb0a30e"  # sha256("hello")[:16]
    assert image_id(b"hello!") != a
    assert re.fullmatch(r"[0-9a-f]{16}", image_id(b""))


@pytest.mark.parametrize("size", [(64, 48), (10, 100), (8, 8), (3, 5)])
def test_to_working_size(size) -> None:
    src = _noise(*size)
    out = to_working(src, 16)
    assert out.size == (16, 16) and out.mode == "RGB"
    same = to_working(_noise(16, 16), 16)
    assert same.size == (16, 16)


def test_to_working_shrink_is_area_average() -> None:
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[:2, :2] = 200
    out = np.asarray(to_working(Image.fromarray(arr), 2))
    assert out[0, 0, 0] == 200 and out[1, 1, 0] == 0


def test_encode_png_round_trip() -> None:
    src = _noise(12, 7)
    back = Image.open(io.BytesIO(encode_png(src)))
    assert back.format == "PNG"
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(src))


@pytest.mark.parametrize(
    ("size", "resize", "expected"),
    [
        ((640, 480), "square", (32, 32)),
        ((640, 480), "short_side", (344, 256)),  # 341.3 -> 344 (nearest multiple of 8)
        ((480, 640), "short_side", (256, 344)),
        ((256, 256), "short_side", (256, 256)),
        ((100, 10), "short_side", (2560, 256)),
        ((13, 7), "short_side", (472, 256)),  # small images are scaled up: the short side is the resolution
    ],
)
def test_working_size(size, resize, expected) -> None:
    from gcmodels.data.images import working_size

    res = 32 if resize == "square" else 256
    assert working_size(*size, res, resize) == expected


def test_working_size_rejects_unknown_policy() -> None:
    from gcmodels.data.images import working_size

    with pytest.raises(ValueError, match="resize must be"):
        working_size(10, 10, 8, "crop")


@pytest.mark.parametrize(
    ("size", "multiple", "expected"),
    [
        ((80, 60), 4, (44, 32)),  # 42.7 -> 44: the nearest multiple of 4 (8 would give 40)
        ((80, 60), 8, (40, 32)),
        ((60, 80), 4, (32, 44)),
        ((160, 60), 4, (84, 32)),  # 85.3 -> 84
        ((120, 80), 2, (48, 32)),
        ((77, 77), 4, (32, 32)),  # squares: resolution x resolution, as with resize=square
        ((100, 99), 4, (32, 32)),  # 32.3 -> 32
        ((31, 200), 16, (32, 208)),  # 206.5 -> 208
        ((1000, 10), 4, (3200, 32)),
    ],
)
def test_working_size_short_side_multiple(size, multiple, expected) -> None:
    """short_side rounds the long side to the nearest multiple of the model's downsampling factor."""
    from gcmodels.data.images import working_size

    assert working_size(*size, 32, "short_side", multiple) == expected
    assert working_size(*size, 32, "square", multiple) == (32, 32)
    w, h = expected
    assert w % multiple == 0 and h % multiple == 0 and min(w, h) == 32
    # the kept aspect ratio is within half a multiple of the original's on the long side
    long_side = max(size) * 32 / min(size)
    assert abs(max(w, h) - long_side) <= multiple / 2


def test_working_size_rejects_a_bad_multiple() -> None:
    from gcmodels.data.images import working_size

    with pytest.raises(ValueError, match="multiple must be positive"):
        working_size(10, 20, 8, "short_side", 0)


def test_square_tiles_cover_the_long_side() -> None:
    from gcmodels.data.images import square_tiles

    wide = np.arange(16 * 40).reshape(16, 40)
    tiles = square_tiles(wide)
    assert [t.shape for t in tiles] == [(16, 16)] * 4  # starts 0, 8, 16, 24 (stride 8, the last touches the end)
    assert [int(t[0, 0]) for t in tiles] == [0, 8, 16, 24]
    tall = np.arange(36 * 16 * 3).reshape(36, 16, 3)
    starts = [int(t[0, 0, 0]) // (16 * 3) for t in square_tiles(tall)]
    assert starts == [0, 8, 16, 20]  # the last one moved back to end at row 36
    square = np.zeros((16, 16, 3))
    assert len(square_tiles(square)) == 1 and square_tiles(square)[0].shape == (16, 16, 3)
    assert len(square_tiles(wide, overlap=0.0)) == 3  # 0, 16, 24
    with pytest.raises(ValueError):
        square_tiles(wide, overlap=1.0)
