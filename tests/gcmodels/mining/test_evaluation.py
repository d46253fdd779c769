"""Maps against boxes: the paper's AUC-PR, average precision, the pointing game (hand-computed
cases), and the paper code's own brute-force counting as a cross-check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gcmodels.mining.evaluation import (
    PAPER_THRESHOLDS,
    average_precision,
    boxes_mask,
    localisation_report,
    localisation_scores,
    paper_aucpr,
    pointing_hit,
)


def _toy() -> tuple[np.ndarray, np.ndarray]:
    """Two box pixels A = 1e-2 and B = 1e-6, two others C = 1e-4 and D = 1e-9."""
    m = np.array([[1e-2, 1e-4], [1e-6, 1e-9]])
    mask = np.array([[True, False], [True, False]])
    return m, mask


def test_paper_thresholds_are_the_papers() -> None:
    assert PAPER_THRESHOLDS.shape == (1000,)
    assert PAPER_THRESHOLDS[0] == pytest.approx(2e-2) and PAPER_THRESHOLDS[-1] == pytest.approx(2e-7)
    assert np.all(np.diff(PAPER_THRESHOLDS) < 0)  # from the largest: recall grows along them


def test_paper_aucpr_by_hand() -> None:
    # thresholds above 1e-2: nothing predicted (P 0, R 0); in (1e-4, 1e-2): A (P 1, R 1/2);
    # in (1e-6, 1e-4): A, C (P 1/2, R 1/2); below 1e-6: A, C, B (P 2/3, R 1); D never.
    # Trapezoids: (0 -> 1/2) x (0 + 1) / 2 + (1/2 -> 1) x (1/2 + 2/3) / 2 = 1/4 + 7/24 = 13/24
    m, mask = _toy()
    assert paper_aucpr(m, mask) == pytest.approx(13 / 24, abs=1e-12)


def test_paper_aucpr_reaches_only_the_papers_range() -> None:
    mask = np.array([[True, False]])
    assert paper_aucpr(np.array([[0.5, 0.4]]), mask) == 0.0  # every value above 2e-2: one point, no area
    assert paper_aucpr(np.array([[1e-9, 1e-9]]), mask) == 0.0  # every value below 2e-7: nothing predicted


def _paper_code_aucpr(dm: np.ndarray, mask: np.ndarray) -> float:
    """The official code's counting, one comparison per threshold and pixel."""
    t = PAPER_THRESHOLDS
    flat, x = dm.ravel(), mask.ravel()
    tp = np.sum(flat[x][None, :] > t[:, None], axis=1)
    fp = np.sum(flat[~x][None, :] > t[:, None], axis=1)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0)
    return float(np.trapezoid(precision, tp / x.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_aucpr_equals_brute_force_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dm = rng.normal(0, 3e-4, (40, 50)) + 2e-4 * (rng.random((40, 50)) > 0.5)
    dm[rng.random((40, 50)) < 0.05] = PAPER_THRESHOLDS[rng.integers(0, 1000)]  # values exactly on a threshold: strict >
    mask = boxes_mask(np.array([[5, 3, 20, 17], [30, 25, 45, 39]]), 40, 50)
    assert paper_aucpr(dm, mask) == pytest.approx(_paper_code_aucpr(dm, mask), abs=1e-12)


def test_average_precision_by_hand() -> None:
    # ranked by value: A (+), C (-), B (+), D (-): precision 1 at A, 2/3 at B -> (1 + 2/3) / 2
    m, mask = _toy()
    assert average_precision(m, mask) == pytest.approx(5 / 6)
    assert average_precision(m * 1e6 + 3.0, mask) == pytest.approx(5 / 6)  # scale-free
    assert average_precision(m, np.ones_like(mask)) == 1.0


def test_pointing_and_inside_outside() -> None:
    m, mask = _toy()
    assert pointing_hit(m, mask) is True
    assert pointing_hit(m, ~mask) is False
    s = localisation_scores(m, mask)
    assert s["pointing"] == 1.0
    assert s["inside"] == pytest.approx((1e-2 + 1e-6) / 2) and s["outside"] == pytest.approx((1e-4 + 1e-9) / 2)
    assert np.isnan(localisation_scores(m, np.ones_like(mask))["outside"])


def test_boxes_mask_is_the_union_with_exclusive_ends() -> None:
    mask = boxes_mask(np.array([[0, 0, 2, 1], [1, 0, 3, 2]]), 3, 4)
    expected = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)


def test_bad_pairs_are_refused() -> None:
    m, mask = _toy()
    with pytest.raises(ValueError, match="no pixel"):
        paper_aucpr(m, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        average_precision(m, mask[:1])
    bad = m.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        localisation_scores(bad, mask)


def test_localisation_report_counts_the_motif_and_the_shared_distractor() -> None:
    """Two images of label a, motif at (0, 0)-(10, 10), ring at (20, 20)-(30, 30): hand-counted shares."""
    truth = pd.DataFrame(
        {"image_id": ["i", "j"], "x0": 0, "y0": 0, "x1": 10, "y1": 10, "dx0": 20, "dy0": 20, "dx1": 30, "dy1": 30}
    )
    on_motif, on_ring, elsewhere = (2, 2, 8, 8), (22, 22, 28, 28), (40, 40, 50, 50)
    rows = [  # image, rank, box, element
        ("i", 0, on_motif, 0),
        ("i", 1, on_ring, 1),
        ("i", 2, elsewhere, 5),  # outside the first 4 elements: not counted there
        ("j", 0, on_ring, 0),
        ("j", 1, on_motif, 0),
        ("j", 2, elsewhere, -1),  # in no element
    ]
    patches = pd.DataFrame(
        [
            {"image_id": i, "label": "a", "rank": r, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "element": e}
            for i, r, b, e in rows
        ]
    )
    rep = localisation_report(patches, truth)
    assert rep["images"] == 2 and rep["rank0_centre"] == 0.5 and rep["rank0_distractor"] == 0.5
    assert rep["top_element_purity"] == {"a": 2 / 3} and rep["top_element_size"] == {"a": 3}
    assert rep["first_elements_distractor"] == 2 / 4  # elements 0 and 1: motif, ring, ring, motif
    assert localisation_report(patches, truth, first=1)["first_elements_distractor"] == 1 / 3
    # the ring's element flagged shared: the first elements are the label-specific ones only
    shared = pd.DataFrame({"label": "a", "element": [0, 1, 5], "shared": [False, True, False]})
    # elements 0 and 5: motif, ring (j rank 0), motif, elsewhere; element 1 (i rank 1, the ring) left out
    rep = localisation_report(patches, truth, elements=shared)
    assert rep["first_specific_elements_distractor"] == 1 / 4 and rep["first_elements_distractor"] == 2 / 4
    plain = localisation_report(patches, truth.drop(columns=["dx0", "dy0", "dx1", "dy1"]))
    assert "first_elements_distractor" not in plain and plain["rank0_centre"] == 0.5
    assert "first_specific_elements_distractor" not in localisation_report(patches, truth)
