"""Scoring what was mined against ground-truth boxes: mined patches (the ground-truth demo and
benchmark, `localisation_report`) and per-pixel typicality maps (`gcmine evaluate`: the paper's
AUC-PR, average precision, the pointing game, typicality inside vs outside the boxes)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DISTRACTOR_BOX",
    "PAPER_THRESHOLDS",
    "average_precision",
    "boxes_mask",
    "localisation_report",
    "localisation_scores",
    "paper_aucpr",
    "pointing_hit",
]


def _contains_centre(p: pd.DataFrame, box: tuple[str, ...] = ("gx0", "gy0", "gx1", "gy1")) -> np.ndarray:
    """Whether each patch (x0, y0, x1, y1) contains the centre of the box in columns `box`."""
    bx0, by0, bx1, by1 = box
    cx = (p[bx0] + p[bx1]) / 2.0
    cy = (p[by0] + p[by1]) / 2.0
    return ((p["x0"] <= cx) & (cx < p["x1"]) & (p["y0"] <= cy) & (cy < p["y1"])).to_numpy()


def _overlaps(p: pd.DataFrame) -> np.ndarray:
    return ((p["x0"] < p["gx1"]) & (p["gx0"] < p["x1"]) & (p["y0"] < p["gy1"]) & (p["gy0"] < p["y1"])).to_numpy()


#: Optional truth columns: the box of a distractor every label shares (the demo's white ring).
DISTRACTOR_BOX = ("dx0", "dy0", "dx1", "dy1")


def localisation_report(
    patches: pd.DataFrame, truth: pd.DataFrame, first: int = 4, elements: pd.DataFrame | None = None
) -> dict:
    """How well mined patches find ground-truth motifs.

    patches: contract columns of `patches.parquet` (image_id, label, rank, x0, y0, x1, y1, element).
    truth: image_id, x0, y0, x1, y1 (the motif box, original pixels), and optionally dx0, dy0, dx1,
    dy1 (the box of a distractor every label shares, `DISTRACTOR_BOX`).
    Returns images (with a rank-0 patch and a box), rank0_centre (share of images whose rank-0
    patch contains the motif centre), rank0_overlap (share whose rank-0 patch overlaps the motif),
    and per label the share of the top element's patches that contain the motif centre
    (`top_element_purity`, its minimum `min_top_element_purity`) and their number
    (`top_element_size`). With distractor boxes also the share of rank-0 patches that contain the
    distractor's centre (`rank0_distractor`) and the share of the patches of each label's `first`
    elements that do (`first_elements_distractor`: what a reader of the first elements sees of a
    thing every label has; element ids 0 to `first` - 1, the order of the report). With `elements`
    (elements.parquet: label, element, shared) also `first_specific_elements_distractor`: the same
    over each label's first `first` elements not flagged shared with other labels.
    """
    gt = truth.rename(columns={c: "g" + c for c in ("x0", "y0", "x1", "y1")})
    distractor = set(DISTRACTOR_BOX) <= set(truth.columns)
    p = patches.merge(
        gt[["image_id", "gx0", "gy0", "gx1", "gy1", *(DISTRACTOR_BOX if distractor else ())]], on="image_id"
    )
    if p.empty:
        raise ValueError("no mined patch belongs to an image with a ground-truth box")
    p = p.assign(centre=_contains_centre(p), overlap=_overlaps(p))
    r0 = p[p["rank"] == 0]
    top = p[p["element"] == 0]
    purity = top.groupby("label")["centre"].mean().to_dict()
    size = top["element"].groupby(top["label"]).size().to_dict()
    out = {
        "images": int(r0["image_id"].nunique()),
        "rank0_centre": float(r0["centre"].mean()),
        "rank0_overlap": float(r0["overlap"].mean()),
        "top_element_purity": {str(k): float(v) for k, v in sorted(purity.items())},
        "top_element_size": {str(k): int(v) for k, v in sorted(size.items())},
        "min_top_element_purity": float(min(purity.values())) if purity else float("nan"),
    }
    if distractor:
        on = _contains_centre(p, DISTRACTOR_BOX)
        out["rank0_distractor"] = float(on[(p["rank"] == 0).to_numpy()].mean())
        firsts = ((p["element"] >= 0) & (p["element"] < first)).to_numpy()
        out["first_elements_distractor"] = float(on[firsts].mean()) if firsts.any() else float("nan")
        if elements is not None and "shared" in elements.columns:
            own = elements[~elements["shared"].astype(bool)].sort_values(["label", "element"])
            keep = pd.MultiIndex.from_frame(own.groupby("label").head(first)[["label", "element"]])
            specific = pd.MultiIndex.from_frame(p[["label", "element"]]).isin(keep)
            out["first_specific_elements_distractor"] = float(on[specific].mean()) if specific.any() else float("nan")
    return out


# ------------------------------------------------------------------ maps against boxes
# The paper's X-ray evaluation (Siglidis et al. 2024, official code, applications/xray/compute.py):
# 1000 thresholds 2 x 10^-s for s evenly spaced in [2, 7], from the largest to the smallest, so
# recall grows along them; a pixel is predicted positive when its typicality is strictly above
# the threshold.
PAPER_THRESHOLDS = 2.0 * 10.0 ** (-np.linspace(2.0, 7.0, 1000))


def boxes_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The union of `boxes` (K, 4) int ``(x0, y0, x1, y1)`` (top-left inclusive, bottom-right
    exclusive, already inside the image) as a (height, width) bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        mask[y0:y1, x0:x1] = True
    return mask


def _check_pair(score_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score_map = np.asarray(score_map)
    mask = np.asarray(mask, dtype=bool)
    if score_map.ndim != 2 or score_map.shape != mask.shape:
        raise ValueError(f"map {score_map.shape} and mask {mask.shape} must be two arrays of one (H, W) shape")
    if not mask.any():
        raise ValueError("the mask holds no pixel: a box is needed to score a map against")
    if not np.isfinite(score_map).all():
        raise ValueError("the map holds NaN or infinite values")
    return score_map, mask


def paper_aucpr(score_map: np.ndarray, mask: np.ndarray, thresholds: np.ndarray = PAPER_THRESHOLDS) -> float:
    """Area under the precision-recall curve exactly as the paper's X-ray code computes it.

    For each threshold s (`thresholds`, from the largest): tp = box pixels with map > s,
    fp = other pixels with map > s, precision = tp / (tp + fp) (0 when nothing is above s),
    recall = tp / box pixels; the area is the trapezoid rule over recall. Only the part of the
    curve those thresholds reach counts (a map whose values all exceed 2e-2 has a single point
    and area 0), which is why the numbers compare with the paper's table and with nothing else.
    Counting by binary search over the sorted values gives the same counts as the code's
    1000 x pixels comparisons, in O(pixels log pixels).
    """
    score_map, mask = _check_pair(score_map, mask)
    inside = np.sort(score_map[mask], kind="stable")
    outside = np.sort(score_map[~mask], kind="stable")
    tp = inside.size - np.searchsorted(inside, thresholds, side="right")
    fp = outside.size - np.searchsorted(outside, thresholds, side="right")
    predicted = tp + fp
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = tp / inside.size
    return float(np.trapezoid(precision, recall))


def average_precision(score_map: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of the pixels of `score_map` ranked by value against `mask`: the
    step-wise area under the precision-recall curve over every threshold (scikit-learn's
    `average_precision_score`), so it does not depend on the map's scale, unlike `paper_aucpr`.
    A box covering the whole image scores 1."""
    from sklearn.metrics import average_precision_score

    score_map, mask = _check_pair(score_map, mask)
    if mask.all():
        return 1.0
    return float(average_precision_score(mask.ravel(), score_map.ravel()))


def pointing_hit(score_map: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: is the map's maximum inside a box? (Ties: the first maximum in
    row-major order.)"""
    score_map, mask = _check_pair(score_map, mask)
    return bool(mask.ravel()[int(np.argmax(score_map))])


def localisation_scores(score_map: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every measure of one (H, W) map against one box mask of the same shape: `aucpr_paper`
    (`paper_aucpr`), `ap` (`average_precision`), `pointing` (1.0 or 0.0), `inside` and `outside`
    (mean typicality in and out of the boxes; NaN outside when the boxes cover the image)."""
    score_map, mask = _check_pair(score_map, mask)
    out = score_map[~mask]
    return {
        "aucpr_paper": paper_aucpr(score_map, mask),
        "ap": average_precision(score_map, mask),
        "pointing": float(pointing_hit(score_map, mask)),
        "inside": float(score_map[mask].mean()),
        "outside": float(out.mean()) if out.size else float("nan"),
    }
