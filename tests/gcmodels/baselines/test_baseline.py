"""Tests of the Doersch et al. 2012 baseline: HOG descriptors and discriminative patch mining."""

from __future__ import annotations

import numpy as np
import pytest

from gcmodels.baselines.doersch import DiscriminativeMiner, hog_cells, patch_descriptors
from gcmodels.data.synthetic import motif_dataset


def test_hog_of_a_vertical_edge_votes_for_horizontal_gradients() -> None:
    img = np.zeros((1, 16, 16, 3), np.float32)
    img[:, :, 8:] = 1.0  # a vertical edge: the gradient points along x (orientation 0)
    hog, colour, energy = hog_cells(img, cell_size=4, bins=9)
    assert hog.shape == (1, 4, 4, 36) and colour.shape == (1, 4, 4, 3) and energy.shape == (1, 4, 4)
    hist = hog[0, 1, 1, :9] + hog[0, 1, 2, :9]  # cells next to the edge
    assert hist.argmax() in (0, 8)  # orientation 0 lies between the first and the last bin
    assert np.allclose(hog[0, :, 0], 0) and np.allclose(energy[0, :, 0], 0)  # flat cells: no gradient
    assert energy[0, 1, 1] > 0 and energy[0, 1, 2] > 0
    assert hog.max() <= 0.2 + 1e-6
    assert np.allclose(colour[0, 0, 0], 0) and np.allclose(colour[0, 0, 3], 1)


def test_hog_orientation_follows_the_edge() -> None:
    # A horizontal edge votes for the bin of 90 degrees (bin 4 of 9: 80-100 degrees).
    img = np.zeros((1, 16, 16, 3), np.float32)
    img[:, 8:] = 1.0
    hog, _, _ = hog_cells(img, cell_size=4, bins=9)
    assert (hog[0, 1, 1, :9] + hog[0, 2, 1, :9]).argmax() == 4


def test_patch_descriptors_shapes_and_boxes() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    desc, boxes, energy = patch_descriptors(images, cell_size=4, patch_cells=3, scales=(1.0, 0.5))
    # scale 1: 6 x 8 cells -> 4 x 6 windows; scale 0.5: 12 x 16 px -> 3 x 4 cells -> 1 x 2 windows
    assert desc.shape[:2] == (2, 24 + 2) and boxes.shape == (26, 4) and energy.shape == (2, 26)
    assert desc.shape[2] == 9 * 36 + 9 * 3
    assert boxes[0].tolist() == [0, 0, 12, 12] and boxes[23].tolist() == [20, 12, 32, 24]
    assert boxes[24].tolist() == [0, 0, 24, 24] and boxes[25].tolist() == [
        8,
        0,
        32,
        24,
    ]  # scale 0.5, back in input pixels
    assert ((boxes[:, 2] <= 32) & (boxes[:, 3] <= 24)).all()
    with pytest.raises(ValueError, match="uint8"):
        patch_descriptors(images.astype(np.float32), cell_size=4, patch_cells=3)
    with pytest.raises(ValueError, match="does not fit"):
        patch_descriptors(images, cell_size=4, patch_cells=7)


@pytest.fixture(scope="module")
def motif_run():
    data = motif_dataset(n_per_label=24, size=48, labels=("circle", "cross", "triangle"), motif_frac=0.25, seed=0)
    images = np.stack([np.asarray(d.image) for d in data])
    labels = [d.label for d in data]
    boxes = np.array([d.box for d in data])
    miner = DiscriminativeMiner(
        cell_size=4,
        patch_cells=3,
        candidates=40,
        neighbours=5,
        detectors=4,
        rounds=3,
        folds=4,
        negatives=400,
        hard_negatives=200,
        keep=2,
        seed=0,
    )
    return miner, miner.mine(images, labels), labels, boxes


def test_top_detections_hit_the_motif_far_more_often_than_chance(motif_run) -> None:
    miner, found, labels, truth = motif_run
    best = found.best_per_image(detectors=1)
    assert len(best) == len(labels)  # one detection for every image, by its own label's best detector
    gt = truth[best["image"].to_numpy()]
    cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    hit = (best["x0"] <= cx) & (cx < best["x1"]) & (best["y0"] <= cy) & (cy < best["y1"])
    side = miner.patch_size
    chance = side**2 / (48 - side + 1) ** 2  # a uniformly placed patch contains a given point
    assert hit.mean() >= max(0.6, 4 * chance), (hit.mean(), chance)


def test_detector_table_and_timing(motif_run) -> None:
    miner, found, _labels, _ = motif_run
    d = found.detectors
    assert set(d["label"]) == {"circle", "cross", "triangle"}
    for _, g in d.groupby("label"):
        assert g["detector"].tolist() == list(range(len(g))) and 1 <= len(g) <= miner.detectors
        assert (np.diff(g["purity"].to_numpy()) <= 1e-12).all()
    # the best detector of every label fires mostly on its own label's images
    assert (d[d["detector"] == 0]["purity"] >= 0.8).all()
    top = found.top_detections(5)
    assert (top.groupby(["label", "detector"]).size() == 5).all()
    assert (top["image_label"] == top["label"]).mean() >= 0.8
    assert set(found.seconds) == {"descriptors", "seeding", "training", "detection", "total"}
    assert found.seconds["total"] > 0
    cols = ["label", "detector", "image", "image_label", "x0", "y0", "x1", "y1", "score", "rank"]
    assert list(found.detections.columns) == cols
    assert ((found.detections["x1"] - found.detections["x0"]) == miner.patch_size).all()


def test_mining_is_deterministic_for_a_seed(motif_run) -> None:
    _miner, _found, _labels, _ = motif_run
    data = motif_dataset(n_per_label=8, size=32, labels=("circle", "cross"), motif_frac=0.25, seed=1)
    images = np.stack([np.asarray(d.image) for d in data])
    small = DiscriminativeMiner(
        cell_size=4,
        patch_cells=2,
        candidates=10,
        neighbours=3,
        detectors=2,
        rounds=2,
        folds=2,
        negatives=100,
        hard_negatives=50,
        seed=3,
    )
    a = small.mine(images, [d.label for d in data])
    b = small.mine(images, [d.label for d in data])
    assert a.detectors.equals(b.detectors) and a.detections.equals(b.detections)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"folds": 1}, "folds"), ({"svm_c": 0.0}, "svm_c"), ({"scales": ()}, "scales"), ({"cell_size": 0}, "cell_size")],
)
def test_bad_settings_are_rejected(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DiscriminativeMiner(**kwargs)


def test_mining_needs_two_labels_and_enough_images() -> None:
    images = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="at least two labels"):
        DiscriminativeMiner().mine(images, ["a"] * 4)
    with pytest.raises(ValueError, match="fewer than folds"):
        DiscriminativeMiner(cell_size=4, patch_cells=2).mine(images, ["a", "b", "b", "b"])
