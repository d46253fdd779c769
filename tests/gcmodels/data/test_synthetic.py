"""Tests of the demo datasets built from package data (scikit-learn's sample photos and digits)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from gcmodels.data.synthetic import (
    MOTIF_STYLES,
    MultiLabelImage,
    SyntheticImage,
    _render,
    assign_motif_styles,
    digits_dataset,
    motif_dataset,
    multilabel_motif_dataset,
)

LABELS = ("circle", "cross", "triangle", "square")


@pytest.fixture(scope="module")
def motifs() -> list[SyntheticImage]:
    return motif_dataset(n_per_label=100, size=64, labels=LABELS, seed=0)


def _pixels(item: SyntheticImage | MultiLabelImage) -> np.ndarray:
    return np.asarray(item.image, dtype=np.int16)


def _colour_mask(item: SyntheticImage | MultiLabelImage, colour: tuple[int, int, int], tol: float = 70.0) -> np.ndarray:
    diff = _pixels(item).astype(float) - np.asarray(colour, dtype=float)
    return np.linalg.norm(diff, axis=2) < tol


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Pixels between two boxes (x1/y1 exclusive); negative when they overlap."""
    gx = max(b[0] - a[2], a[0] - b[2])
    gy = max(b[1] - a[3], a[1] - b[3])
    return max(gx, gy)


def test_counts_sizes_and_modes(motifs: list[SyntheticImage]) -> None:
    assert len(motifs) == 400
    assert Counter(m.label for m in motifs) == dict.fromkeys(LABELS, 100)
    assert [m.label for m in motifs[::100]] == list(LABELS)  # grouped in label order
    for m in motifs:
        assert m.image.mode == "RGB"
        assert m.image.size == (64, 64)


def test_other_size_and_count() -> None:
    items = motif_dataset(n_per_label=3, size=32, labels=("a", "b"), seed=1)
    assert len(items) == 6
    assert all(m.image.size == (32, 32) for m in items)
    assert all(m.box is not None and 0 <= m.box[0] < m.box[2] <= 32 for m in items)


def test_deterministic_for_a_seed() -> None:
    a = motif_dataset(n_per_label=5, seed=7)
    b = motif_dataset(n_per_label=5, seed=7)
    assert [(m.label, m.box, m.distractor_box, m.source) for m in a] == [
        (m.label, m.box, m.distractor_box, m.source) for m in b
    ]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(_pixels(x), _pixels(y))


def test_different_seeds_differ() -> None:
    a = motif_dataset(n_per_label=5, seed=0)
    b = motif_dataset(n_per_label=5, seed=1)
    assert [m.box for m in a] != [m.box for m in b]
    assert sum(not np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, b)) == len(a)


def test_boxes_inside_and_of_expected_size(motifs: list[SyntheticImage]) -> None:
    nominal = 0.2 * 64  # 12.8 px, +-10 %
    for m in motifs:
        for box in (m.box, m.distractor_box):
            assert box is not None
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert x1 - x0 == y1 - y0
            assert round(0.9 * nominal) <= x1 - x0 <= round(1.1 * nominal)
    sides = {m.box[2] - m.box[0] for m in motifs}  # type: ignore[index]
    assert len(sides) >= 2  # the size is jittered


def test_motif_and_distractor_do_not_overlap(motifs: list[SyntheticImage]) -> None:
    for m in motifs:
        assert _gap(m.box, m.distractor_box) >= 2  # type: ignore[arg-type]


def test_positions_cover_the_image(motifs: list[SyntheticImage]) -> None:
    xs = np.array([m.box[0] for m in motifs])  # type: ignore[index]
    ys = np.array([m.box[1] for m in motifs])  # type: ignore[index]
    assert xs.min() <= 5 and xs.max() >= 45
    assert ys.min() <= 5 and ys.max() >= 45


@pytest.mark.parametrize("shape", [*MOTIF_STYLES, "ring"])
def test_rendered_shapes_fill_their_box(shape: str) -> None:
    """Every shape touches all four sides of its tile, so the recorded box is tight."""
    for side in (7, 13, 14):
        alpha = np.asarray(_render(shape, side, (200, 50, 50)))[..., 3]
        assert alpha.shape == (side, side)
        assert alpha[0].max() > 0 and alpha[-1].max() > 0
        assert alpha[:, 0].max() > 0 and alpha[:, -1].max() > 0
        assert alpha.max() == 255


def test_motif_colour_dominates_its_box(motifs: list[SyntheticImage]) -> None:
    styles = assign_motif_styles(LABELS)
    for m in motifs:
        mask = _colour_mask(m, styles[m.label].color)
        x0, y0, x1, y1 = m.box  # type: ignore[misc]
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        frac_in = mask[inside].mean()
        frac_out = mask[~inside].mean()
        assert frac_in >= 0.15, (m.label, frac_in)
        assert frac_in > 5 * frac_out, (m.label, frac_in, frac_out)


def test_distractor_is_the_same_for_all_labels(motifs: list[SyntheticImage]) -> None:
    """The distractor box holds a light ring whatever the label."""
    for label in LABELS:
        light = []
        for m in (m for m in motifs if m.label == label):
            x0, y0, x1, y1 = m.distractor_box  # type: ignore[misc]
            patch = _pixels(m)[y0:y1, x0:x1]
            light.append((patch.min(axis=2) >= 200).mean())
        assert np.mean(light) > 0.2, label


def test_all_catalogue_motifs_are_distinct_and_visible() -> None:
    labels = list(MOTIF_STYLES)
    assert len(labels) >= 8
    assert len({s.shape for s in MOTIF_STYLES.values()}) == len(labels)
    assert len({s.color for s in MOTIF_STYLES.values()}) == len(labels)
    items = motif_dataset(n_per_label=3, labels=labels, seed=2)
    for m in items:
        mask = _colour_mask(m, MOTIF_STYLES[m.label].color)
        x0, y0, x1, y1 = m.box  # type: ignore[misc]
        assert mask[y0:y1, x0:x1].mean() >= 0.15, m.label


def test_arbitrary_label_names_get_distinct_styles() -> None:
    styles = assign_motif_styles(["cat", "star", "dog"])
    assert styles["star"] == MOTIF_STYLES["star"]
    assert len({s.shape for s in styles.values()}) == 3


def test_backgrounds_come_from_both_photos(motifs: list[SyntheticImage]) -> None:
    for label in LABELS:
        sources = Counter(m.source for m in motifs if m.label == label)
        assert set(sources) == {"china.jpg", "flower.jpg"}
        assert min(sources.values()) >= 25
    # the recorded source is the real one: the two photos have clearly different colours
    mean = {
        src: np.mean([_pixels(m).reshape(-1, 3).mean(axis=0) for m in motifs if m.source == src], axis=0)
        for src in ("china.jpg", "flower.jpg")
    }
    assert np.abs(mean["china.jpg"] - mean["flower.jpg"]).max() > 30
    # real photographs: lots of texture, not flat colour
    assert np.mean([_pixels(m).std() for m in motifs]) > 20


def test_too_many_labels_raises() -> None:
    labels = [f"l{i}" for i in range(len(MOTIF_STYLES) + 1)]
    with pytest.raises(ValueError, match=str(len(labels))):
        motif_dataset(n_per_label=1, labels=labels)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        motif_dataset(n_per_label=1, labels=("a", "a"))
    with pytest.raises(ValueError):
        motif_dataset(n_per_label=1, labels=())
    with pytest.raises(ValueError):
        motif_dataset(n_per_label=1, motif_frac=0.6)


def test_digits_all() -> None:
    items = digits_dataset()
    assert len(items) == 1797
    assert sorted(Counter(m.label for m in items)) == [str(d) for d in range(10)]
    for m in items[:50]:
        assert m.image.mode == "RGB" and m.image.size == (32, 32)
        assert m.box is None and m.distractor_box is None
    # white ink on a black background, grey (identical channels)
    px = np.stack([_pixels(m) for m in items])
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])
    assert px[:, 0, 0].mean() < 30
    assert px.max() > 200


def test_digits_subsample_and_size() -> None:
    items = digits_dataset(n_per_label=20, size=24, seed=3)
    assert Counter(m.label for m in items) == {str(d): 20 for d in range(10)}
    assert all(m.image.size == (24, 24) for m in items)
    again = digits_dataset(n_per_label=20, size=24, seed=3)
    assert [m.source for m in items] == [m.source for m in again]
    other = digits_dataset(n_per_label=20, size=24, seed=4)
    assert [m.source for m in items] != [m.source for m in other]
    with pytest.raises(ValueError):
        digits_dataset(n_per_label=10_000)


def test_mixed_shapes_sizes_boxes_and_determinism() -> None:
    """mixed_motif_dataset: every image of its own shape in the ranges, motif and ring of the
    nominal size inside it and apart, deterministic for a seed."""
    from gcmodels.data.synthetic import mixed_motif_dataset

    items = mixed_motif_dataset(n_per_label=30, seed=4)
    assert len(items) == 120 and [it.label for it in items[::30]] == ["circle", "cross", "triangle", "square"]
    widths = np.array([it.image.width for it in items])
    heights = np.array([it.image.height for it in items])
    assert widths.min() >= 60 and widths.max() <= 160 and heights.min() >= 60 and heights.max() <= 120
    assert widths.max() - widths.min() > 60 and heights.max() - heights.min() > 30  # really spread
    assert len(set(zip(widths, heights))) > 60
    for it in items:
        for box in (it.box, it.distractor_box):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= it.image.width and 0 <= y0 < y1 <= it.image.height
            assert 14 <= x1 - x0 <= 18 and x1 - x0 == y1 - y0  # 16 px +-10 %, whatever the frame
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = it.box, it.distractor_box
        assert ax1 + 2 <= bx0 or bx1 + 2 <= ax0 or ay1 + 2 <= by0 or by1 + 2 <= ay0
    again = mixed_motif_dataset(n_per_label=30, seed=4)
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.box == b.box for a, b in zip(items, again)
    )
    other = mixed_motif_dataset(n_per_label=30, seed=5)
    assert [it.image.size for it in other] != [it.image.size for it in items]
    with pytest.raises(ValueError, match="width_range"):
        mixed_motif_dataset(n_per_label=1, width_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="no room"):
        mixed_motif_dataset(n_per_label=1, base=20)


# ------------------------------------------------------------------ multi-label images


@pytest.fixture(scope="module")
def multi() -> list[MultiLabelImage]:
    return multilabel_motif_dataset(n_per_label=100, size=64, labels=LABELS, seed=0)


def test_multilabel_counts_and_pair_balance(multi: list[MultiLabelImage]) -> None:
    """Every label's motif is in exactly n_per_label images, every pair of labels in the same
    number of images, and about half of the images carry two motifs."""
    assert Counter(label for m in multi for label in m.labels) == dict.fromkeys(LABELS, 100)
    pairs = Counter(m.labels for m in multi if len(m.labels) == 2)
    assert set(pairs) == {tuple(sorted(p)) for p in itertools.combinations(LABELS, 2)}  # every pair, sorted
    assert set(pairs.values()) == {22}  # k = round(2 * 0.5 * 100 / (1.5 * 3))
    singles = Counter(m.labels[0] for m in multi if len(m.labels) == 1)
    assert singles == dict.fromkeys(LABELS, 100 - 3 * 22)
    assert len(multi) == 6 * 22 + 4 * 34
    assert abs(len(pairs) * 22 / len(multi) - 0.5) < 0.02
    for m in multi:
        assert m.labels == tuple(sorted(set(m.labels))) and 1 <= len(m.labels) <= 2
        assert tuple(m.boxes) == m.labels
        assert m.image.mode == "RGB" and m.image.size == (64, 64)
    # grouped: the pairs in combination order, then the singles in label order
    assert [m.labels for m in multi[:22]] == [("circle", "cross")] * 22
    assert multi[-1].labels == ("square",)


@pytest.mark.parametrize(
    ("share", "per_label", "pairs_each", "singles_each"),
    [(0.0, 10, 0, 10), (0.25, 60, 8, 36), (1.0, 99, 33, 0), (1.0, 100, 33, 1)],
)
def test_multilabel_pair_share(share: float, per_label: int, pairs_each: int, singles_each: int) -> None:
    items = multilabel_motif_dataset(n_per_label=per_label, size=32, labels=LABELS, pair_share=share, seed=1)
    pairs = Counter(m.labels for m in items if len(m.labels) == 2)
    assert set(pairs.values()) <= {pairs_each} and len(pairs) == (6 if pairs_each else 0)
    assert Counter(m.labels[0] for m in items if len(m.labels) == 1) == (
        dict.fromkeys(LABELS, singles_each) if singles_each else {}
    )
    assert Counter(label for m in items for label in m.labels) == dict.fromkeys(LABELS, per_label)


def test_multilabel_deterministic_for_a_seed() -> None:
    a = multilabel_motif_dataset(n_per_label=6, seed=7)
    b = multilabel_motif_dataset(n_per_label=6, seed=7)
    assert [(m.labels, dict(m.boxes), m.distractor_box, m.source) for m in a] == [
        (m.labels, dict(m.boxes), m.distractor_box, m.source) for m in b
    ]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(_pixels(x), _pixels(y))
    c = multilabel_motif_dataset(n_per_label=6, seed=8)
    assert [m.labels for m in c] == [m.labels for m in a]  # the design does not depend on the seed
    assert [dict(m.boxes) for m in c] != [dict(m.boxes) for m in a]
    assert sum(not np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, c)) == len(a)


def test_multilabel_boxes_inside_disjoint_and_spread(multi: list[MultiLabelImage]) -> None:
    nominal = 0.2 * 64
    for m in multi:
        boxes = [*m.boxes.values(), m.distractor_box]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert x1 - x0 == y1 - y0
            assert round(0.9 * nominal) <= x1 - x0 <= round(1.1 * nominal)
        for a, b in itertools.combinations(boxes, 2):
            assert _gap(a, b) >= 2, (m.labels, a, b)
    # each label's motif lands all over the image in two-motif images too
    for label in LABELS:
        xs = np.array([m.boxes[label][0] for m in multi if len(m.labels) == 2 and label in m.labels])
        ys = np.array([m.boxes[label][1] for m in multi if len(m.labels) == 2 and label in m.labels])
        assert xs.min() <= 8 and xs.max() >= 42 and ys.min() <= 8 and ys.max() >= 42, label


def test_multilabel_each_box_shows_its_labels_motif(multi: list[MultiLabelImage]) -> None:
    """The pixels in each label's box have that label's colour (and not the other label's), and
    that colour is rare outside the image's motif boxes."""
    styles = assign_motif_styles(LABELS)
    for m in multi:
        motifs = np.zeros((64, 64), dtype=bool)
        for x0, y0, x1, y1 in m.boxes.values():
            motifs[y0:y1, x0:x1] = True
        for label, (x0, y0, x1, y1) in m.boxes.items():
            own = _colour_mask(m, styles[label].color)
            frac_in = own[y0:y1, x0:x1].mean()
            assert frac_in >= 0.15, (m.labels, label, frac_in)
            assert frac_in > 5 * own[~motifs].mean(), (m.labels, label)
            for other in m.labels:
                if other != label:
                    assert _colour_mask(m, styles[other].color)[y0:y1, x0:x1].mean() < frac_in / 3, (m.labels, label)


def test_multilabel_distractor_and_backgrounds(multi: list[MultiLabelImage]) -> None:
    light = []
    for m in multi:
        x0, y0, x1, y1 = m.distractor_box
        light.append((_pixels(m)[y0:y1, x0:x1].min(axis=2) >= 200).mean())
    assert np.mean(light) > 0.2
    assert Counter(m.source for m in multi).keys() == {"china.jpg", "flower.jpg"}


def test_multilabel_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="pair_share"):
        multilabel_motif_dataset(n_per_label=1, pair_share=1.5)
    with pytest.raises(ValueError, match="two different labels"):
        multilabel_motif_dataset(n_per_label=4, labels=("circle",))
    assert len(multilabel_motif_dataset(n_per_label=4, labels=("circle",), pair_share=0.0)) == 4
    with pytest.raises(ValueError, match="n_per_label"):
        multilabel_motif_dataset(n_per_label=-1)
    with pytest.raises(ValueError, match="distinct"):
        multilabel_motif_dataset(n_per_label=1, labels=("a", "a"))
    # 0.3 x 64 px: three boxes of up to 21 px and two gaps do not fit in 64 px, two boxes do
    with pytest.raises(ValueError, match="no room for 2 motif"):
        multilabel_motif_dataset(n_per_label=10, size=64, motif_frac=0.3)
    assert len(multilabel_motif_dataset(n_per_label=2, size=64, motif_frac=0.3, pair_share=0.0)) == 8
    with pytest.raises(ValueError, match="size"):
        multilabel_motif_dataset(n_per_label=1, size=12)


def test_multilabel_tightest_sizes_always_place_every_shape() -> None:
    """At the largest motif the size check lets through, the three boxes still always fit."""
    for size, frac in ((16, 0.25), (32, 0.26), (64, 0.29)):
        items = multilabel_motif_dataset(n_per_label=60, size=size, motif_frac=frac, pair_share=1.0, seed=3)
        assert len(items) == 6 * 20  # every image carries a pair
        for m in items:
            for a, b in itertools.combinations([*m.boxes.values(), m.distractor_box], 2):
                assert _gap(a, b) >= 2
        with pytest.raises(ValueError, match="no room"):  # the tightest size the check accepts
            multilabel_motif_dataset(n_per_label=3, size=size, motif_frac=frac + 0.02, pair_share=1.0)
