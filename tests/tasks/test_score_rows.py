"""`score_rows`: the image-level rows of typicality.parquet, multi-label images included."""

from __future__ import annotations

import numpy as np

from gcmine.tasks.score import score_rows


def test_an_image_of_two_labels_has_a_row_under_each() -> None:
    frame = score_rows(
        ["i", "i", "j"], ["a", "b", "a"], np.array([0.1, 0.2, 0.3]), ["a", "b"], None, None, ["a|b", "a|b", "a"]
    )
    assert frame[["image_id", "label", "image_label"]].values.tolist() == [
        ["i", "a", "a|b"],
        ["i", "b", "a|b"],
        ["j", "a", "a"],
    ]
    assert frame["typicality"].tolist() == [0.1, 0.2, 0.3]


def test_cotypicality_keeps_one_row_per_image_and_label() -> None:
    """An image scored twice (once per own label) under every label: each (image, label) once."""
    co = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    frame = score_rows(["i", "i", "j"], ["a", "b", "a"], np.zeros(3), ["a", "b"], co, None, ["a|b", "a|b", "a"])
    assert frame[["image_id", "label", "image_label", "typicality"]].values.tolist() == [
        ["i", "a", "a|b", 1.0],
        ["i", "b", "a|b", 2.0],
        ["j", "a", "a", 3.0],
        ["j", "b", "a", 4.0],
    ]
