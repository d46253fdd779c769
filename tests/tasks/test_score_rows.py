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


def test_the_adaptive_settings_reach_the_rule() -> None:
    """Every score.adaptive_* setting is passed into the rule, patches turned into map cells."""
    from types import SimpleNamespace

    from gcmine.tasks.score import _adaptive_rule
    from gcmodels.config import ScoreConfig

    config = ScoreConfig(
        adaptive=True,
        adaptive_first=2,
        adaptive_z=0.5,
        adaptive_rule="decision",
        adaptive_decide=3,
        adaptive_variance="moderated",
    )
    rule = _adaptive_rule(config, {"top_k": 7, "per_image": 2, "patch_size": 16}, SimpleNamespace(latent_factor=8))
    assert (rule.first, rule.z, rule.kind, rule.variance) == (2, 0.5, "decision", "moderated")
    assert (rule.top_k, rule.per_image, rule.decide, rule.patch) == (7, 2, 2, 2)  # decide <= per_image
    assert (
        _adaptive_rule(
            ScoreConfig(), {"top_k": 7, "per_image": 5, "patch_size": 6}, SimpleNamespace(latent_factor=1)
        ).variance
        == "own"
    )
