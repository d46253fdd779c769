"""Demo datasets built only from data that ships with installed packages (nothing is downloaded).

Two collections are provided:

* :func:`motif_dataset` -- the ground-truth set. Every image is a random crop of one of the two
  real photographs that scikit-learn ships (``china.jpg`` and ``flower.jpg``), drawn from the same
  distribution for every label. On top of it sit one *label-specific motif* (a filled shape with
  its own colour, e.g. a red circle) and one *distractor* (a white ring) that appears in every
  label. What is typical of a label is therefore exactly its motif, and its location is recorded
  in :attr:`SyntheticImage.box`.
* :func:`multilabel_motif_dataset` -- the same set with one or two label motifs per image (two
  from different labels), each with its box, for mining images under each of their labels.
* :func:`digits_dataset` -- scikit-learn's 8x8 handwritten digits, upsampled, as a real (if tiny)
  labelled collection without ground-truth boxes.

The photographs are read through :func:`sklearn.datasets.load_sample_images` (package data, read
once per process and cached); this module itself opens no files and writes nothing.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DISTRACTOR_COLOR",
    "MOTIF_STYLES",
    "MotifStyle",
    "MultiLabelImage",
    "SyntheticImage",
    "assign_motif_styles",
    "digits_dataset",
    "mixed_motif_dataset",
    "motif_dataset",
    "multilabel_motif_dataset",
]

Box = tuple[int, int, int, int]

_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-averaged down (anti-aliasing)
_OUTLINE = (20, 20, 20)  # thin dark outline around every shape
_SIZE_JITTER = 0.10  # motif side varies by +-10 %
_COLOR_JITTER = 20  # each RGB channel varies by +-20 levels
_MIN_GAP = 2  # pixels between the motif box and the distractor box
_PHOTO_NAMES = ("china.jpg", "flower.jpg")

#: Base grey level of the distractor (a white ring with a dark outline); jittered down to 225.
DISTRACTOR_COLOR: tuple[int, int, int] = (245, 245, 245)


@dataclass(frozen=True)
class SyntheticImage:
    """One image of a demo dataset with its label and, for motif images, the ground truth.

    Attributes:
        image: the RGB image.
        label: its class label.
        box: ``(x0, y0, x1, y1)`` of the label's motif in pixels of ``image`` (x = column,
            y = row, ``x1``/``y1`` exclusive), tight around the visible motif; ``None`` when the
            dataset has no ground truth (digits).
        distractor_box: the same for the label-independent distractor shape, or ``None``.
        source: provenance of the pixels: ``"china.jpg"`` / ``"flower.jpg"`` (the photograph the
            background was cropped from) for motif images, ``"digits[i]"`` for digit ``i`` of
            scikit-learn's digits.
    """

    image: Image.Image
    label: str
    box: Box | None
    distractor_box: Box | None = None
    source: str | None = None


@dataclass(frozen=True)
class MultiLabelImage:
    """One image of :func:`multilabel_motif_dataset`: one or two label motifs and the distractor.

    Attributes:
        image: the RGB image.
        labels: the labels whose motif the image shows, sorted (one or two distinct labels).
        boxes: ``label -> (x0, y0, x1, y1)`` of that label's motif in pixels of ``image`` (x =
            column, y = row, ``x1``/``y1`` exclusive), tight around the motif; one entry per
            label of ``labels``, in the same order.
        distractor_box: the same for the label-independent white ring.
        source: the photograph the background was cropped from (``"china.jpg"`` / ``"flower.jpg"``).
    """

    image: Image.Image
    labels: tuple[str, ...]
    boxes: Mapping[str, Box]
    distractor_box: Box
    source: str


@dataclass(frozen=True)
class MotifStyle:
    """How a label's motif looks: a shape (see :data:`MOTIF_STYLES`) and a saturated RGB colour."""

    shape: str
    color: tuple[int, int, int]


# Shapes are polygons in the unit square (x right, y down) that touch all four sides, so the
# bounding box of the drawn shape is the box it is drawn into; "circle" and "square" are drawn
# with the dedicated ImageDraw primitives.
def _star(points: int = 5, inner: float = 0.45) -> tuple[tuple[float, float], ...]:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    xs = (xs - xs.min()) / (xs.max() - xs.min())
    ys = (ys - ys.min()) / (ys.max() - ys.min())
    return tuple(zip(xs.tolist(), ys.tolist()))


def _plus(a: float = 0.32) -> tuple[tuple[float, float], ...]:
    b = 1.0 - a
    return ((a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a))


def _saltire(w: float = 0.2) -> tuple[tuple[float, float], ...]:
    h = 0.5
    return (
        (0, w),
        (w, 0),
        (h, h - w),
        (1 - w, 0),
        (1, w),
        (h + w, h),
        (1, 1 - w),
        (1 - w, 1),
        (h, h + w),
        (w, 1),
        (0, 1 - w),
        (h - w, h),
    )


_POLYGONS: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType(
    {
        "triangle": ((0.5, 0.0), (1.0, 1.0), (0.0, 1.0)),
        "cross": _plus(),
        "star": _star(),
        "hexagon": ((0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)),
        "diamond": ((0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)),
        "x": _saltire(),
        "arrow": ((0.0, 0.3), (0.55, 0.3), (0.55, 0.0), (1.0, 0.5), (0.55, 1.0), (0.55, 0.7), (0.0, 0.7)),
        "hourglass": ((0.0, 0.0), (1.0, 0.0), (0.6, 0.5), (1.0, 1.0), (0.0, 1.0), (0.4, 0.5)),
    }
)

#: The catalogue of label motifs, in the order they are handed to labels that are not named
#: after a shape. Every entry has its own shape and its own colour.
MOTIF_STYLES: Mapping[str, MotifStyle] = MappingProxyType(
    {
        "circle": MotifStyle("circle", (220, 0, 60)),  # crimson red (pure red is close to the flower centre)
        "cross": MotifStyle("cross", (30, 80, 235)),  # blue
        "triangle": MotifStyle("triangle", (250, 215, 20)),  # yellow
        "square": MotifStyle("square", (30, 175, 50)),  # green
        "star": MotifStyle("star", (225, 40, 205)),  # magenta
        "hexagon": MotifStyle("hexagon", (250, 125, 10)),  # orange
        "diamond": MotifStyle("diamond", (20, 205, 225)),  # cyan
        "x": MotifStyle("x", (125, 50, 205)),  # purple
        "arrow": MotifStyle("arrow", (165, 235, 30)),  # lime
        "hourglass": MotifStyle("hourglass", (255, 110, 180)),  # pink
    }
)


def assign_motif_styles(labels: Sequence[str]) -> dict[str, MotifStyle]:
    """Map each label to a distinct motif style.

    A label named after a catalogue entry (``"circle"``, ``"star"``, ...) gets that entry; the
    other labels get the unused entries in catalogue order.

    Raises:
        ValueError: no labels, duplicate labels, or more labels than :data:`MOTIF_STYLES` holds.
    """
    labels = list(labels)
    if not labels:
        raise ValueError("at least one label is needed")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    if len(labels) > len(MOTIF_STYLES):
        raise ValueError(f"{len(labels)} labels asked for, but only {len(MOTIF_STYLES)} distinct motifs are defined")
    spare = [name for name in MOTIF_STYLES if name not in labels]
    styles: dict[str, MotifStyle] = {}
    for label in labels:
        styles[label] = MOTIF_STYLES[label] if label in MOTIF_STYLES else MOTIF_STYLES[spare.pop(0)]
    return styles


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    """The two sample photographs shipped with scikit-learn (china.jpg, flower.jpg), as RGB."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    by_name = {str(name).replace("\\", "/").rsplit("/", 1)[-1]: img for name, img in zip(data.filenames, data.images)}
    return tuple(Image.fromarray(np.asarray(by_name[name], dtype=np.uint8)).convert("RGB") for name in _PHOTO_NAMES)


def _background_rect(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, str]:
    """A random crop of aspect `width` : `height` (0.5-1.0 of the largest such crop, random
    position and flip) of a random photo, resized to `width` x `height` (a square: 0.5-1.0 of the
    photo's short side)."""
    which = int(rng.integers(len(_PHOTO_NAMES)))
    photo = _photos()[which]
    w, h = photo.size
    k = rng.uniform(0.5, 1.0) * min(w / width, h / height)
    cw, ch = min(w, max(1, int(round(k * width)))), min(h, max(1, int(round(k * height))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    flip = bool(rng.integers(2))
    crop = photo.resize((width, height), Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=3.0)
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop, _PHOTO_NAMES[which]


def _jitter_color(rng: np.random.Generator, color: tuple[int, int, int]) -> tuple[int, int, int]:
    noisy = np.clip(np.asarray(color) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3), 0, 255)
    return tuple(int(c) for c in noisy)  # type: ignore[return-value]


def _render(shape: str, side: int, color: tuple[int, int, int]) -> Image.Image:
    """An RGBA tile of ``side`` x ``side`` pixels whose opaque part is the outlined shape.

    The shape touches all four borders of the tile, so the tile is its tight bounding box.
    ``shape`` is a key of :data:`MOTIF_STYLES` or ``"ring"`` (the distractor).
    """
    big = side * _SUPERSAMPLE
    outline = max(2, int(round(big / 14)))
    tile = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    full = (0, 0, big - 1, big - 1)
    fill = (*color, 255)
    dark = (*_OUTLINE, 255)
    if shape == "circle":
        draw.ellipse(full, fill=fill, outline=dark, width=outline)
    elif shape == "square":
        draw.rectangle(full, fill=fill, outline=dark, width=outline)
    elif shape == "ring":
        band = max(outline, int(round(big * 0.17)))
        draw.ellipse(full, fill=dark)
        draw.ellipse((outline, outline, big - 1 - outline, big - 1 - outline), fill=fill)
        inner = outline + band
        hole = inner + outline
        if 2 * hole < big - 1:  # tiny tiles (a few pixels) get a filled disc: no room for a hole
            draw.ellipse((inner, inner, big - 1 - inner, big - 1 - inner), fill=dark)
            draw.ellipse((hole, hole, big - 1 - hole, big - 1 - hole), fill=(0, 0, 0, 0))
    else:
        points = [(x * (big - 1), y * (big - 1)) for x, y in _POLYGONS[shape]]
        draw.polygon(points, fill=fill, outline=dark, width=outline)
    return tile.reduce(_SUPERSAMPLE)


def _sample_side(rng: np.random.Generator, nominal: float) -> int:
    return max(3, int(round(nominal * rng.uniform(1.0 - _SIZE_JITTER, 1.0 + _SIZE_JITTER))))


def _free_position(
    rng: np.random.Generator, size: int, side: int, avoid: Sequence[Box], height: int | None = None
) -> tuple[int, int]:
    """A uniformly random top-left corner of a ``side`` box inside the image (``size`` wide,
    ``height`` tall, square when None), >= 2 px from every box of ``avoid``."""
    pos = np.arange(size - side + 1)
    rows = pos if height is None else np.arange(height - side + 1)
    ok = np.ones((rows.size, pos.size), dtype=bool)
    for ax0, ay0, ax1, ay1 in avoid:
        clear_x = (pos + side + _MIN_GAP <= ax0) | (pos >= ax1 + _MIN_GAP)
        clear_y = (rows + side + _MIN_GAP <= ay0) | (rows >= ay1 + _MIN_GAP)
        ok &= clear_y[:, None] | clear_x[None, :]
    ok_rows, ok_cols = np.nonzero(ok)
    if ok_rows.size == 0:  # cannot happen for the sizes the generators accept
        raise ValueError(f"no room for a {side}px shape next to {len(avoid)} other(s) in a {size}px image")
    k = int(rng.integers(ok_rows.size))
    return int(ok_cols[k]), int(ok_rows[k])


def motif_dataset(
    n_per_label: int = 100,
    size: int = 64,
    labels: Sequence[str] = ("circle", "cross", "triangle", "square"),
    motif_frac: float = 0.2,
    seed: int = 0,
) -> list[SyntheticImage]:
    """The ground-truth demo set: photo backgrounds, one label motif and one shared distractor each.

    Every image is built the same way whatever its label: a random square crop (random photo out
    of china.jpg / flower.jpg, side 0.5-1.0 of the photo's short side, random position, random
    horizontal flip) resized to ``size`` x ``size``; then the label's motif (its own shape and
    saturated colour, thin dark outline, side ``motif_frac * size`` +-10 %, colour +-20 per
    channel) at a uniformly random position fully inside the image; then the distractor, a white
    ring of the same size range, at a uniformly random position whose box is at least 2 px away
    from the motif box. Shapes are drawn at 4x and box-filtered down (anti-aliased); the recorded
    boxes are the tiles they were drawn into, which the shapes touch on all four sides.

    Args:
        n_per_label: images per label.
        size: image side in pixels.
        labels: distinct label names; a name of :data:`MOTIF_STYLES` gets that motif, other names
            get the unused motifs in catalogue order (see :func:`assign_motif_styles`).
        motif_frac: nominal motif side as a fraction of ``size``.
        seed: seed of the numpy ``Generator``; the result is a deterministic function of the
            arguments.

    Returns:
        ``n_per_label * len(labels)`` images, grouped by label in the order of ``labels``.

    Raises:
        ValueError: more labels than motifs (the message names the count), duplicate or no labels,
            or sizes that leave no room for a motif and a distractor.
    """
    styles = assign_motif_styles(labels)
    if n_per_label < 0:
        raise ValueError(f"n_per_label must be >= 0, got {n_per_label}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not 0.0 < motif_frac <= 0.4:
        raise ValueError(f"motif_frac must be in (0, 0.4], got {motif_frac}")
    nominal = motif_frac * size
    if 2 * int(round(nominal * (1 + _SIZE_JITTER))) + _MIN_GAP > size:
        raise ValueError(f"motif_frac {motif_frac} leaves no room for a motif and a distractor at size {size}")

    rng = np.random.default_rng(seed)
    out: list[SyntheticImage] = []
    for label, style in styles.items():
        for _ in range(n_per_label):
            background, source = _background_rect(rng, size, size)
            canvas = background.convert("RGBA")

            side = _sample_side(rng, nominal)
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            canvas.alpha_composite(_render(style.shape, side, _jitter_color(rng, style.color)), dest=(x, y))
            box = (x, y, x + side, y + side)

            d_side = _sample_side(rng, nominal)
            dx, dy = _free_position(rng, size, d_side, [box])
            grey = int(rng.integers(225, 256))
            canvas.alpha_composite(_render("ring", d_side, (grey, grey, grey)), dest=(dx, dy))
            d_box = (dx, dy, dx + d_side, dy + d_side)

            out.append(SyntheticImage(canvas.convert("RGB"), label, box, d_box, source))
    return out


def mixed_motif_dataset(
    n_per_label: int = 100,
    base: int = 80,
    labels: Sequence[str] = ("circle", "cross", "triangle", "square"),
    motif_frac: float = 0.2,
    width_range: tuple[float, float] = (0.75, 2.0),
    height_range: tuple[float, float] = (0.75, 1.5),
    seed: int = 0,
) -> list[SyntheticImage]:
    """The ground-truth set of :func:`motif_dataset` in images of every shape.

    Each image gets its own width and height, drawn uniformly in ``width_range`` and
    ``height_range`` times ``base`` pixels (the defaults give aspect ratios from 1:2 to 8:3); its
    background is a random crop of that aspect ratio (0.5-1.0 of the largest one, random position
    and flip) of a random photo; then, as in :func:`motif_dataset`, the label's motif and the
    shared white ring, each of side ``motif_frac * base`` +-10 % (objects keep their size in
    pixels whatever the frame), at random positions, the ring's box at least 2 px from the motif's.

    Returns:
        ``n_per_label * len(labels)`` images, grouped by label in the order of ``labels``; a
        deterministic function of the arguments.

    Raises:
        ValueError: bad labels (see :func:`assign_motif_styles`), ranges that are not
            0 < low <= high, or sizes that leave no room for a motif and a distractor.
    """
    styles = assign_motif_styles(labels)
    if n_per_label < 0:
        raise ValueError(f"n_per_label must be >= 0, got {n_per_label}")
    for name, (lo, hi) in (("width_range", width_range), ("height_range", height_range)):
        if not 0 < lo <= hi:
            raise ValueError(f"{name} must be 0 < low <= high, got {(lo, hi)}")
    if not 0.0 < motif_frac <= 0.4:
        raise ValueError(f"motif_frac must be in (0, 0.4], got {motif_frac}")
    nominal = motif_frac * base
    smallest = int(round(min(width_range[0], height_range[0]) * base))
    if smallest < 16 or 2 * int(round(nominal * (1 + _SIZE_JITTER))) + _MIN_GAP > smallest:
        raise ValueError(
            f"motif_frac {motif_frac} at base {base} leaves no room for a motif and a distractor in a {smallest} px side"
        )
    rng = np.random.default_rng(seed)
    out: list[SyntheticImage] = []
    for label, style in styles.items():
        for _ in range(n_per_label):
            width = int(round(base * rng.uniform(*width_range)))
            height = int(round(base * rng.uniform(*height_range)))
            background, source = _background_rect(rng, width, height)
            canvas = background.convert("RGBA")

            side = _sample_side(rng, nominal)
            x = int(rng.integers(0, width - side + 1))
            y = int(rng.integers(0, height - side + 1))
            canvas.alpha_composite(_render(style.shape, side, _jitter_color(rng, style.color)), dest=(x, y))
            box = (x, y, x + side, y + side)

            d_side = _sample_side(rng, nominal)
            dx, dy = _free_position(rng, width, d_side, [box], height)
            grey = int(rng.integers(225, 256))
            canvas.alpha_composite(_render("ring", d_side, (grey, grey, grey)), dest=(dx, dy))
            d_box = (dx, dy, dx + d_side, dy + d_side)

            out.append(SyntheticImage(canvas.convert("RGB"), label, box, d_box, source))
    return out


def multilabel_motif_dataset(
    n_per_label: int = 100,
    size: int = 64,
    labels: Sequence[str] = ("circle", "cross", "triangle", "square"),
    motif_frac: float = 0.2,
    pair_share: float = 0.5,
    seed: int = 0,
) -> list[MultiLabelImage]:
    """The ground-truth set of :func:`motif_dataset` with one or two label motifs per image.

    Images are built as in :func:`motif_dataset` (random photo crop of ``size`` x ``size``, motifs
    of side ``motif_frac * size`` +-10 % with their label's shape and jittered colour, the shared
    white ring, anti-aliased), but an image shows the motifs of one label or of two different
    labels. Every pair of labels occurs in the same number ``k`` of images, and each label's motif
    in exactly ``n_per_label`` images: ``(len(labels) - 1) * k`` two-motif ones and the rest alone.
    ``k`` is the whole number that makes the share of two-motif images closest to ``pair_share``
    (``k = round(2 p n / ((1 + p)(L - 1)))``, at most ``n // (L - 1)``), so the share is met up
    to that rounding (0.5 with 100 images per label and 4 labels: 132 of 268 images, 0.49). The
    motifs of an image are placed in random order: the first uniformly inside the image, the
    second, then the ring, uniformly among the positions whose box is at least 2 px from every box
    already placed.

    Args:
        n_per_label: images showing each label's motif.
        size: image side in pixels.
        labels: distinct label names (see :func:`assign_motif_styles`).
        motif_frac: nominal motif side as a fraction of ``size``.
        pair_share: wanted share of images with two motifs, in [0, 1].
        seed: seed of the numpy ``Generator``; the result is a deterministic function of the
            arguments.

    Returns:
        The images grouped by label set: ``k`` images of each pair (pairs in the order of
        ``itertools.combinations(labels, 2)``), then the single-motif images of each label in the
        order of ``labels``.

    Raises:
        ValueError: bad labels (see :func:`assign_motif_styles`), a negative count, a share outside
            [0, 1], two-motif images asked of one label, or sizes that leave no room for the
            motifs and the distractor.
    """
    styles = assign_motif_styles(labels)
    names = list(styles)
    if n_per_label < 0:
        raise ValueError(f"n_per_label must be >= 0, got {n_per_label}")
    if not 0.0 <= pair_share <= 1.0:
        raise ValueError(f"pair_share must be in [0, 1], got {pair_share}")
    if pair_share > 0 and len(names) < 2:
        raise ValueError(f"two-motif images need two different labels, got only {names}; set pair_share=0")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not 0.0 < motif_frac <= 0.4:
        raise ValueError(f"motif_frac must be in (0, 0.4], got {motif_frac}")
    others = len(names) - 1
    k = 0
    if pair_share > 0:
        k = min(int(round(2 * pair_share * n_per_label / ((1 + pair_share) * others))), n_per_label // others)
    nominal = motif_frac * size
    shapes = 3 if k > 0 else 2  # boxes per image: the motifs and the ring
    if shapes * int(round(nominal * (1 + _SIZE_JITTER))) + (shapes - 1) * _MIN_GAP > size:
        raise ValueError(
            f"motif_frac {motif_frac} leaves no room for {shapes - 1} motif(s) and a distractor at size {size}"
        )
    # With size >= 3 sides + 2 gaps a placed box cannot come within a side + gap of two image corners
    # (not on one axis, so not on both): two boxes leave two corners free for the third; placement
    # never fails.
    groups: list[tuple[str, ...]] = [pair for pair in itertools.combinations(names, 2) for _ in range(k)]
    groups += [(label,) for label in names for _ in range(n_per_label - others * k)]

    rng = np.random.default_rng(seed)
    out: list[MultiLabelImage] = []
    for group in groups:
        background, source = _background_rect(rng, size, size)
        canvas = background.convert("RGBA")
        placed: dict[str, Box] = {}
        for i in rng.permutation(len(group)):
            label = group[int(i)]
            side = _sample_side(rng, nominal)
            if placed:
                x, y = _free_position(rng, size, side, list(placed.values()))
            else:
                x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            style = styles[label]
            canvas.alpha_composite(_render(style.shape, side, _jitter_color(rng, style.color)), dest=(x, y))
            placed[label] = (x, y, x + side, y + side)

        d_side = _sample_side(rng, nominal)
        dx, dy = _free_position(rng, size, d_side, list(placed.values()))
        grey = int(rng.integers(225, 256))
        canvas.alpha_composite(_render("ring", d_side, (grey, grey, grey)), dest=(dx, dy))
        d_box = (dx, dy, dx + d_side, dy + d_side)

        ordered = tuple(sorted(group))
        out.append(
            MultiLabelImage(canvas.convert("RGB"), ordered, {lab: placed[lab] for lab in ordered}, d_box, source)
        )
    return out


def digits_dataset(n_per_label: int | None = None, size: int = 32, seed: int = 0) -> list[SyntheticImage]:
    """scikit-learn's handwritten digits as ``size`` x ``size`` RGB images, labels ``"0"``..``"9"``.

    The 8x8 images (ink levels 0-16) are scaled to 0-255 and kept as *white ink on a black
    background* (the orientation of the source data, as in MNIST), upsampled with bicubic
    interpolation and replicated to three identical channels.

    Args:
        n_per_label: if given, that many images per digit, drawn without replacement
            (deterministic given ``seed``, kept in dataset order); ``None`` keeps all 1797.
        size: output side in pixels.
        seed: seed of the subsampling.

    Returns:
        Images grouped by digit, ``"0"`` first; ``box`` and ``distractor_box`` are ``None`` and
        ``source`` is ``"digits[i]"`` with ``i`` the index in ``load_digits()``.

    Raises:
        ValueError: ``n_per_label`` is negative or larger than the rarest digit's count (174).
    """
    from sklearn.datasets import load_digits

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    targets = np.asarray(digits.target)
    rng = np.random.default_rng(seed)
    out: list[SyntheticImage] = []
    for digit in range(10):
        idx = np.flatnonzero(targets == digit)
        if n_per_label is not None:
            if not 0 <= n_per_label <= idx.size:
                raise ValueError(f"n_per_label must be in [0, {idx.size}] for digit {digit}, got {n_per_label}")
            idx = np.sort(rng.choice(idx, size=n_per_label, replace=False))
        for i in idx:
            img = Image.fromarray(images[i]).resize((size, size), Image.Resampling.BICUBIC)
            out.append(SyntheticImage(img.convert("RGB"), str(digit), None, None, f"digits[{int(i)}]"))
    return out
