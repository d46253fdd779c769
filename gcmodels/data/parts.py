"""The parts ground-truth set: label-typical part styles on an object every label shares.

"What makes a 1950s car look like the 1950s" is a question about details (headlights, fins,
antennas) of an object every label shows, each detail's style typical of a label without being
exclusive to it. :func:`parts_dataset` builds such a collection with known answers:

* every image is a random crop of one of scikit-learn's two sample photographs (as the motif
  set, :mod:`gcmodels.data.synthetic`), with one **shared object** on it (a car, or a house in the
  second layout: same body for every label, random position, size +-10 %, mirrored half of the
  time) and a **distractor** (the white ring of the motif set) somewhere off the object;
* the object has one slot per **part kind** (the car: a headlight, a tail fin, a thin antenna
  with a ball on top, a hubcap; the house: a window, a door, a chimney, a thin flag pole).
  Parts come in several sizes, the thin one a 2 px pole at 96 px;
* each label **owns** `parts_per_label` part kinds (label j owns kinds j, j+1, ... modulo the
  kind count, so each kind is owned by as many labels), and each owned (label, kind) pair has
  its own **style** (a shape and a saturated colour);
* in an image of label l, a kind l owns shows l's style with probability `p_own` (typical of
  the label in most, not all, of its images) and the **plain style** (a neutral grey shape,
  shared by all labels) otherwise; a kind l does not own shows the plain style, or with
  probability `p_cross` the style of one of its owners (the style is present in other labels
  too: cross-contamination).

What is typical of a label is therefore its own parts' styles; the body, the plain parts, the
background and the ring are not. Each image records every part's box and whose style it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from gcmodels.data.synthetic import (
    _SUPERSAMPLE,
    DISTRACTOR_COLOR,
    MOTIF_STYLES,
    Box,
    _background_rect,
    _free_position,
    _jitter_color,
    _render,
)

__all__ = ["PARTS_LAYOUTS", "PartSlot", "PartsImage", "PartsLayout", "part_styles", "parts_dataset"]

_PLAIN = (118, 118, 118)  # grey of the plain style
_DARK = (20, 20, 20)
_PALETTE = tuple(style.color for style in MOTIF_STYLES.values())  # ten saturated colours
_RING_FRAC = 0.13  # the distractor's side, as a fraction of the image side


@dataclass(frozen=True)
class PartSlot:
    """One part kind of a layout.

    name: the part kind; centre: where its centre sits on the object, as fractions of the object
    box (x to the right on the unmirrored object, y down); side: its
    nominal side as a fraction of the image side; shapes: the shapes of its styles, the first is
    the plain style's (shapes of :data:`gcmodels.data.synthetic.MOTIF_STYLES`); thin: drawn as a
    2 px pole of `side` height with a ball of the style's shape on top (the ball is side / 3).
    """

    name: str
    centre: tuple[float, float]
    side: float
    shapes: tuple[str, ...]
    thin: bool = False


@dataclass(frozen=True)
class PartsLayout:
    """A shared object: its size (fractions of the image side), its body, and its part slots."""

    name: str
    size: tuple[float, float]
    slots: tuple[PartSlot, ...]


PARTS_LAYOUTS: Mapping[str, PartsLayout] = MappingProxyType(
    {
        "car": PartsLayout(
            "car",
            (0.80, 0.46),
            (
                PartSlot("headlight", (0.93, 0.56), 0.09, ("circle", "square", "diamond", "hexagon", "star")),
                PartSlot("fin", (0.07, 0.40), 0.11, ("triangle", "arrow", "hourglass", "x", "cross")),
                PartSlot("antenna", (0.56, 0.14), 0.17, ("circle", "triangle", "square", "star", "diamond"), thin=True),
                PartSlot("hubcap", (0.24, 0.88), 0.08, ("circle", "cross", "star", "x", "hexagon")),
            ),
        ),
        "house": PartsLayout(
            "house",
            (0.56, 0.66),
            (
                PartSlot("window", (0.27, 0.60), 0.11, ("square", "circle", "diamond", "hexagon", "cross")),
                PartSlot("door", (0.74, 0.84), 0.12, ("square", "arrow", "hourglass", "triangle", "x")),
                PartSlot("chimney", (0.80, 0.22), 0.09, ("square", "hexagon", "star", "circle", "diamond")),
                PartSlot("flag", (0.36, 0.12), 0.16, ("triangle", "square", "circle", "star", "diamond"), thin=True),
            ),
        ),
    }
)


@dataclass(frozen=True)
class PartsImage:
    """One image of :func:`parts_dataset`.

    Attributes:
        image: the RGB image.
        label: its label.
        object_box: ``(x0, y0, x1, y1)`` of the shared object (pixels, x1/y1 exclusive).
        parts: part kind -> ``(box, owner)``: the part's tight box and the label whose style it
            shows (``None``: the plain style).
        distractor_box: the white ring's box.
        source: the photograph of the background.
    """

    image: Image.Image
    label: str
    object_box: Box
    parts: Mapping[str, tuple[Box, str | None]]
    distractor_box: Box
    source: str

    def own_parts(self) -> list[str]:
        """The part kinds that show this image's own label's style."""
        return [kind for kind, (_, owner) in self.parts.items() if owner == self.label]


def part_styles(
    labels: Sequence[str], layout: PartsLayout, parts_per_label: int
) -> dict[tuple[str, str], tuple[str, tuple[int, int, int]]]:
    """(label, part kind) -> (shape, colour) of every owned pair: label j owns kinds j, j+1, ...
    (`parts_per_label` of them, modulo the kind count); the owners of one kind get distinct shapes
    (the slot's shapes after its plain one, in owner order) and distinct colours."""
    kinds = [slot.name for slot in layout.slots]
    styles: dict[tuple[str, str], tuple[str, tuple[int, int, int]]] = {}
    owners: dict[str, int] = {}
    for j, label in enumerate(labels):
        for k in range(parts_per_label):
            s = (j + k) % len(kinds)
            slot = layout.slots[s]
            n = owners.get(slot.name, 0)
            owners[slot.name] = n + 1
            styles[(label, slot.name)] = (
                slot.shapes[1 + n % (len(slot.shapes) - 1)],
                _PALETTE[(3 * s + j) % len(_PALETTE)],
            )
    return styles


def _body(layout: str, width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    """The object's body as an RGBA tile of width x height (anti-aliased), facing right."""
    W, H = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    tile = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(tile)
    line = max(2, int(round(W / 60)))
    fill, dark = (*color, 255), (*_DARK, 255)
    glass = (200, 215, 225, 255)
    if layout == "car":
        d.rounded_rectangle((0, 0.40 * H, W - 1, 0.86 * H), radius=int(0.10 * H), fill=fill, outline=dark, width=line)
        cabin = [(0.22 * W, 0.40 * H), (0.34 * W, 0.20 * H), (0.72 * W, 0.20 * H), (0.84 * W, 0.40 * H)]
        d.polygon(cabin, fill=fill, outline=dark, width=line)
        d.polygon([(0.36 * W, 0.38 * H), (0.44 * W, 0.24 * H), (0.52 * W, 0.24 * H), (0.52 * W, 0.38 * H)], fill=glass)
        d.polygon([(0.56 * W, 0.38 * H), (0.56 * W, 0.24 * H), (0.69 * W, 0.24 * H), (0.78 * W, 0.38 * H)], fill=glass)
        r = 0.14 * H
        for cx in (0.24 * W, 0.76 * W):
            d.ellipse((cx - r, 0.88 * H - r, cx + r, 0.88 * H + r), fill=dark)
    elif layout == "house":
        d.rectangle((0.08 * W, 0.36 * H, 0.92 * W, H - 1), fill=fill, outline=dark, width=line)
        d.polygon(
            [(0, 0.38 * H), (0.5 * W, 0.04 * H), (W - 1, 0.38 * H)], fill=(150, 70, 60, 255), outline=dark, width=line
        )
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return tile.reduce(_SUPERSAMPLE)


def _thin(shape: str, height: int, color: tuple[int, int, int]) -> Image.Image:
    """A 2 px dark pole of `height` pixels with a ball of `shape` (side height // 3) on top."""
    ball = max(3, height // 3)
    tile = Image.new("RGBA", (ball, height), (0, 0, 0, 0))
    pole = Image.new("RGBA", (2, height - ball + 1), (*_DARK, 255))
    tile.alpha_composite(pole, dest=((ball - 2) // 2, ball - 1))
    tile.alpha_composite(_render(shape, ball, color), dest=(0, 0))
    return tile


def parts_dataset(
    n_per_label: int = 100,
    size: int = 96,
    labels: Sequence[str] = ("1950s", "1960s", "1970s", "1980s"),
    layout: str = "car",
    parts_per_label: int = 2,
    p_own: float = 0.8,
    p_cross: float = 0.15,
    seed: int = 0,
) -> list[PartsImage]:
    """The parts ground-truth set (see the module docstring).

    Args:
        n_per_label: images per label.
        size: image side in pixels (square images; >= 64).
        labels: distinct label names (2 to 10).
        layout: a key of :data:`PARTS_LAYOUTS` (``"car"`` or ``"house"``).
        parts_per_label: part kinds each label owns (1 to the layout's kind count).
        p_own: probability that an owned part shows the label's style (else the plain style).
        p_cross: probability that a part the label does not own shows an owner's style.
        seed: the numpy Generator's seed: the result is a deterministic function of the arguments.

    Returns:
        ``n_per_label * len(labels)`` images, grouped by label in the order of ``labels``.

    Raises:
        ValueError: a bad count, size, layout, label list or probability (the message names it).
    """
    labels = list(labels)
    if not 2 <= len(labels) <= len(_PALETTE) or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be 2 to {len(_PALETTE)} distinct names, got {labels}")
    if layout not in PARTS_LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(PARTS_LAYOUTS)}, got {layout!r}")
    spec = PARTS_LAYOUTS[layout]
    if not 1 <= parts_per_label <= len(spec.slots):
        raise ValueError(f"parts_per_label must be in [1, {len(spec.slots)}], got {parts_per_label}")
    if n_per_label < 0:
        raise ValueError(f"n_per_label must be >= 0, got {n_per_label}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    for name, p in (("p_own", p_own), ("p_cross", p_cross)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    styles = part_styles(labels, spec, parts_per_label)
    owners = {slot.name: [lab for lab in labels if (lab, slot.name) in styles] for slot in spec.slots}

    rng = np.random.default_rng(seed)
    out: list[PartsImage] = []
    for label in labels:
        for _ in range(n_per_label):
            background, source = _background_rect(rng, size, size)
            canvas = background.convert("RGBA")
            scale = rng.uniform(0.9, 1.1)
            ow = min(size - 2, int(round(spec.size[0] * size * scale)))
            oh = min(size - 2, int(round(spec.size[1] * size * scale)))
            ox, oy = int(rng.integers(0, size - ow + 1)), int(rng.integers(0, size - oh + 1))
            mirror = bool(rng.integers(2))
            grey = int(rng.integers(150, 200))
            body = _body(layout, ow, oh, _jitter_color(rng, (grey, grey, grey + 15)))
            if mirror:
                body = body.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            canvas.alpha_composite(body, dest=(ox, oy))
            parts: dict[str, tuple[Box, str | None]] = {}
            for slot in spec.slots:
                if label in owners[slot.name]:
                    owner = label if rng.random() < p_own else None
                else:
                    others = owners[slot.name]
                    owner = others[int(rng.integers(len(others)))] if others and rng.random() < p_cross else None
                shape, color = (slot.shapes[0], _PLAIN) if owner is None else styles[(owner, slot.name)]
                color = _jitter_color(rng, color)
                side = max(3, int(round(slot.side * size * rng.uniform(0.95, 1.05))))
                tile = _thin(shape, side, color) if slot.thin else _render(shape, side, color)
                fx = 1.0 - slot.centre[0] if mirror else slot.centre[0]
                px = int(round(ox + fx * ow - tile.width / 2))
                py = int(round(oy + slot.centre[1] * oh - tile.height / 2))
                px = min(max(px, 0), size - tile.width)
                py = min(max(py, 0), size - tile.height)
                canvas.alpha_composite(tile, dest=(px, py))
                parts[slot.name] = ((px, py, px + tile.width, py + tile.height), owner)
            boxes = [(ox, oy, ox + ow, oy + oh)] + [b for b, _ in parts.values()]
            d_side = max(3, int(round(_RING_FRAC * size * rng.uniform(0.9, 1.1))))
            dx, dy = _free_position(rng, size, d_side, boxes)
            g = int(rng.integers(225, DISTRACTOR_COLOR[0] + 11))
            canvas.alpha_composite(_render("ring", d_side, (g, g, g)), dest=(dx, dy))
            out.append(
                PartsImage(
                    canvas.convert("RGB"),
                    label,
                    (ox, oy, ox + ow, oy + oh),
                    MappingProxyType(parts),
                    (dx, dy, dx + d_side, dy + d_side),
                    source,
                )
            )
    return out
