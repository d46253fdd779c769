"""Patch pooling, greedy non-overlapping selection, box mapping and box-pooled features.

Coordinates: ``x`` is the column, ``y`` the row; a box is ``(x0, y0, x1, y1)`` with the top-left
inclusive and the bottom-right exclusive. All functions are vectorised over images: the only
Python loop is over the k patches kept per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_mean", "pool_map", "scale_boxes", "top_patches"]


def pool_map(maps: Tensor, size: int) -> Tensor:
    """Mean of every size x size window (stride 1): maps (B, H, W) -> (B, H - size + 1, W - size + 1).

    The value at (y, x) is the typicality of the patch with top-left corner (x, y). Computed from
    separable float64 running sums, so the cost does not depend on the patch size (a 50 x 50
    window over a 256 x 256 map costs what a 2 x 2 one does); maps holding NaN or inf are pooled
    window by window instead, so a bad pixel only affects the windows that contain it.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} does not fit maps of {h}x{w}")
    if not bool(torch.isfinite(maps).all()):  # a NaN / inf would spread through the running sums
        return F.avg_pool2d(maps.unsqueeze(1).float(), size, stride=1).squeeze(1)
    # Separable sliding sums from float64 running sums, each along the contiguous axis.
    c = F.pad(maps.double().cumsum(2), (1, 0))  # (B, H, W+1)
    rows = (c[:, :, size:] - c[:, :, :-size]).transpose(1, 2).contiguous()  # (B, Wp, H) sums over x
    c = F.pad(rows.cumsum(2), (1, 0))  # (B, Wp, H+1)
    return (c[:, :, size:] - c[:, :, :-size]).transpose(1, 2).div(size * size).float().contiguous()


def top_patches(maps: Tensor, size: int, k: int) -> tuple[Tensor, Tensor]:
    """The k most typical non-overlapping size x size patches of each map, by greedy suppression.

    maps (B, H, W). Returns boxes (B, k, 4) long as (x0, y0, x1, y1) and scores (B, k) float32
    (the mean of the map over the patch), best first. Boxes that overlap *or touch* a kept box are
    suppressed (as in the paper). Where fewer than k patches fit, the remaining rows are
    (-1, -1, -1, -1) with a NaN score. Ties go to the first position in row-major order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pooled = pool_map(maps, size)  # (B, Hp, Wp), a fresh tensor: suppressed in place below
    b, hp, wp = pooled.shape
    flat = pooled.view(b, -1)
    rows = torch.arange(hp, device=maps.device)
    cols = torch.arange(wp, device=maps.device)
    out_boxes = torch.full((b, k, 4), -1, dtype=torch.long, device=maps.device)
    out_scores = torch.full((b, k), float("nan"), dtype=torch.float32, device=maps.device)
    for j in range(k):
        best, idx = flat.max(dim=1)  # (B,); ties: the first index, i.e. row-major order
        valid = torch.isfinite(best)
        y, x = idx // wp, idx % wp
        box = torch.stack([x, y, x + size, y + size], dim=1)
        out_boxes[:, j] = torch.where(valid[:, None], box, out_boxes[:, j])
        out_scores[:, j] = torch.where(valid, best, out_scores[:, j])
        if j == k - 1:
            break
        # Suppress every top-left corner within `size` of the kept one on both axes (a rectangle
        # of rows x columns): those boxes overlap or touch the kept box.
        near_rows = ((rows[None] - y[:, None]).abs() <= size) & valid[:, None]  # (B, Hp)
        near_cols = (cols[None] - x[:, None]).abs() <= size  # (B, Wp)
        pooled.masked_fill_(near_rows[:, :, None] & near_cols[:, None, :], float("-inf"))
    return out_boxes, out_scores


def scale_boxes(boxes: np.ndarray, from_size: tuple, to_size: tuple) -> np.ndarray:
    """Map boxes (..., 4) from an image of (width, height) `from_size` to one of `to_size`.

    Sizes may be scalars or arrays broadcasting against ``boxes[..., 0]`` (one size per image).
    The result covers every target pixel the source box touches (floor the start, ceil the end),
    clipped to the image and at least one pixel wide. Rows of -1 (no box) stay -1.
    """
    boxes = np.asarray(boxes)
    fw, fh = (np.asarray(v, dtype=np.float64) for v in from_size)
    tw, th = (np.asarray(v, dtype=np.int64) for v in to_size)
    sx, sy = tw / fw, th / fh
    out = np.empty(boxes.shape, dtype=np.int64)
    out[..., 0] = np.floor(boxes[..., 0] * sx + 1e-9)
    out[..., 1] = np.floor(boxes[..., 1] * sy + 1e-9)
    out[..., 2] = np.ceil(boxes[..., 2] * sx - 1e-9)
    out[..., 3] = np.ceil(boxes[..., 3] * sy - 1e-9)
    out[..., 0] = out[..., 0].clip(0, tw - 1)
    out[..., 1] = out[..., 1].clip(0, th - 1)
    out[..., 2] = np.maximum(out[..., 2].clip(1, tw), out[..., 0] + 1)
    out[..., 3] = np.maximum(out[..., 3].clip(1, th), out[..., 1] + 1)
    missing = (boxes < 0).any(axis=-1)
    out[missing] = -1
    return out


def box_mean(features: Tensor, boxes: Tensor) -> Tensor:
    """Mean feature over each box: features (B, F, h, w), boxes (B, k, 4) in feature-map pixels
    (x0, y0, x1, y1), exclusive ends, -1 rows allowed -> (B, k, F) (zeros for -1 rows).

    Uses an integral image, so the cost does not depend on the box size.
    """
    b, f, h, w = features.shape
    ii = F.pad(features.float().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (B, F, h+1, w+1)
    flat = ii.reshape(b, f, -1)
    bx = boxes.clamp(min=0)
    x0, y0, x1, y1 = bx.unbind(-1)  # (B, k) each
    x1 = torch.maximum(x1.clamp(max=w), x0 + 1)
    y1 = torch.maximum(y1.clamp(max=h), y0 + 1)

    def corner(y: Tensor, x: Tensor) -> Tensor:
        idx = (y * (w + 1) + x)[:, None, :].expand(b, f, -1)  # (B, F, k)
        return flat.gather(2, idx)

    total = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)  # (B, F, k)
    area = ((x1 - x0) * (y1 - y0)).float()[:, None, :]
    mean = (total / area).transpose(1, 2)  # (B, k, F)
    return torch.where((boxes < 0).any(-1, keepdim=True), torch.zeros_like(mean), mean)
