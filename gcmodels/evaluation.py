"""Scoring mined patches against ground-truth boxes (the ground-truth demo and benchmark)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["localisation_report"]


def _contains_centre(p: pd.DataFrame) -> np.ndarray:
    cx = (p["gx0"] + p["gx1"]) / 2.0
    cy = (p["gy0"] + p["gy1"]) / 2.0
    return ((p["x0"] <= cx) & (cx < p["x1"]) & (p["y0"] <= cy) & (cy < p["y1"])).to_numpy()


def _overlaps(p: pd.DataFrame) -> np.ndarray:
    return ((p["x0"] < p["gx1"]) & (p["gx0"] < p["x1"]) & (p["y0"] < p["gy1"]) & (p["gy0"] < p["y1"])).to_numpy()


def localisation_report(patches: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How well mined patches find ground-truth motifs.

    patches: contract columns of `patches.parquet` (image_id, label, rank, x0, y0, x1, y1, element).
    truth: image_id, x0, y0, x1, y1 (the motif box, original pixels).
    Returns rank0_centre (share of images whose rank-0 patch contains the motif centre),
    rank0_overlap (share whose rank-0 patch overlaps the motif), random_centre (the chance a
    uniformly placed patch of the same size contains the centre, for reference), and per label
    the share of the top element's patches that contain the motif centre (`top_element_purity`).
    """
    gt = truth.rename(columns={c: "g" + c for c in ("x0", "y0", "x1", "y1")})[["image_id", "gx0", "gy0", "gx1", "gy1"]]
    p = patches.merge(gt, on="image_id", how="inner")
    if p.empty:
        raise ValueError("no mined patch belongs to an image with a ground-truth box")
    p = p.assign(centre=_contains_centre(p), overlap=_overlaps(p))
    r0 = p[p["rank"] == 0]
    top = p[p["element"] == 0]
    purity = top.groupby("label")["centre"].mean().to_dict()
    size = top["element"].groupby(top["label"]).size().to_dict()
    return {
        "images": int(r0["image_id"].nunique()),
        "rank0_centre": float(r0["centre"].mean()),
        "rank0_overlap": float(r0["overlap"].mean()),
        "top_element_purity": {str(k): float(v) for k, v in sorted(purity.items())},
        "top_element_size": {str(k): int(v) for k, v in sorted(size.items())},
        "min_top_element_purity": float(min(purity.values())) if purity else float("nan"),
    }
