"""The parts ground-truth set (gcmodels.data.parts): ownership, styles, boxes and the rates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gcmodels.data.parts import PARTS_LAYOUTS, part_styles, parts_dataset

LABELS = ("1950s", "1960s", "1970s", "1980s")


@pytest.fixture(scope="module")
def car() -> list:
    return parts_dataset(n_per_label=24, seed=3)


def test_each_label_owns_two_kinds_and_each_kind_two_owners_with_distinct_styles() -> None:
    for layout in PARTS_LAYOUTS.values():
        styles = part_styles(LABELS, layout, 2)
        assert Counter(label for label, _ in styles) == dict.fromkeys(LABELS, 2)
        by_kind: dict[str, list] = {}
        for (_, kind), style in styles.items():
            by_kind.setdefault(kind, []).append(style)
        assert sorted(by_kind) == sorted(s.name for s in layout.slots)
        for kind, got in by_kind.items():
            shapes, colours = zip(*got)
            assert len(got) == 2 and len(set(shapes)) == 2 and len(set(colours)) == 2, kind
            plain = next(s.shapes[0] for s in layout.slots if s.name == kind)
            assert plain not in shapes  # an owner's style never looks like the plain one


def test_images_boxes_and_owners(car) -> None:
    assert len(car) == 96 and [it.label for it in car[::24]] == list(LABELS)
    styles = part_styles(LABELS, PARTS_LAYOUTS["car"], 2)
    for it in car:
        w, h = it.image.size
        assert (w, h) == (96, 96)
        ox0, oy0, ox1, oy1 = it.object_box
        assert 0 <= ox0 < ox1 <= 96 and 0 <= oy0 < oy1 <= 96
        dx0, dy0, dx1, dy1 = it.distractor_box
        # the ring is off the object (2 px gap) and inside the image
        assert 0 <= dx0 and dx1 <= 96 and 0 <= dy0 and dy1 <= 96
        assert dx1 + 2 <= ox0 or dx0 >= ox1 + 2 or dy1 + 2 <= oy0 or dy0 >= oy1 + 2
        assert list(it.parts) == ["headlight", "fin", "antenna", "hubcap"]
        for kind, ((x0, y0, x1, y1), owner) in it.parts.items():
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            assert owner is None or (owner, kind) in styles  # only an owner's style or the plain one
        assert set(it.own_parts()) <= {k for (lab, k) in styles if lab == it.label}
    # the thin part: a box a few pixels wide (the ball) and three times as tall
    x0, y0, x1, y1 = car[0].parts["antenna"][0]
    assert x1 - x0 <= 6 and y1 - y0 >= 3 * (x1 - x0) - 1


def test_the_part_shows_its_style_colour(car) -> None:
    """At an owned part's box centre the pixel has its style's colour (within the jitter)."""
    styles = part_styles(LABELS, PARTS_LAYOUTS["car"], 2)
    checked = 0
    for it in car:
        for kind in ("headlight", "hubcap"):
            (x0, y0, x1, y1), owner = it.parts[kind]
            if owner is None:
                continue
            shape, colour = styles[(owner, kind)]
            if shape in {"circle", "square", "hexagon", "diamond"}:  # solid at the centre
                pixel = np.asarray(it.image)[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
                assert np.abs(pixel - np.array(colour)).max() <= 25, (kind, shape, pixel, colour)
                checked += 1
    assert checked > 20


def test_rates_of_own_and_crossed_styles() -> None:
    items = parts_dataset(n_per_label=80, size=64, seed=1)
    styles = part_styles(LABELS, PARTS_LAYOUTS["car"], 2)
    owned = [(it.parts[k][1] == it.label) for it in items for k in it.parts if (it.label, k) in styles]
    crossed = [(it.parts[k][1] is not None) for it in items for k in it.parts if (it.label, k) not in styles]
    assert abs(np.mean(owned) - 0.8) < 0.05 and abs(np.mean(crossed) - 0.15) < 0.05
    pure = parts_dataset(n_per_label=10, size=64, p_own=1.0, p_cross=0.0, layout="house")
    for it in pure:
        assert sorted(it.own_parts()) == sorted(
            k for (lab, k) in part_styles(LABELS, PARTS_LAYOUTS["house"], 2) if lab == it.label
        )
        assert all(owner in (None, it.label) for _, owner in it.parts.values())


def test_deterministic_and_mirrored() -> None:
    a = parts_dataset(n_per_label=6, seed=5, layout="house")
    b = parts_dataset(n_per_label=6, seed=5, layout="house")
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) and x.parts == y.parts for x, y in zip(a, b))
    c = parts_dataset(n_per_label=6, seed=6, layout="house")
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, c))
    # mirrored objects: the headlight is at the front, on either side of the car
    sides = {
        it.parts["headlight"][0][0] > (it.object_box[0] + it.object_box[2]) / 2 for it in parts_dataset(n_per_label=10)
    }
    assert sides == {True, False}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ("a",)}, "labels must be 2 to"),
        ({"labels": ("a", "a")}, "labels must be 2 to"),
        ({"layout": "boat"}, "layout must be one of"),
        ({"parts_per_label": 5}, "parts_per_label must be in"),
        ({"size": 48}, "size must be at least 64"),
        ({"p_own": 1.5}, "p_own must be in"),
        ({"n_per_label": -1}, "n_per_label must be >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parts_dataset(**kwargs)
