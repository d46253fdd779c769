"""Patch pooling, greedy non-overlapping selection, box mapping and box-pooled features.

Coordinates: ``x`` is the column, ``y`` the row; a box is ``(x0, y0, x1, y1)`` with the top-left
inclusive and the bottom-right exclusive. Pooling and selection run on the CPU in chunks of maps
sized to stay in the CPU caches (results go back to the maps' device); within a chunk they are
vectorised over maps, except for one small window write per kept patch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_mean", "pool_map", "scale_boxes", "top_patches", "typical_weights"]


# Maps are pooled in chunks of about this many map pixels: the float64 running sums of a chunk
# (8 bytes a pixel, a few buffers) then stay in the CPU caches, where a whole shard's would not
# (and large fresh buffers also cost page faults on every call).
CHUNK_PIXELS = 1 << 16
# ... and selected in batches of about this many pooled positions (float32, 4 MiB): numpy's
# per-call overhead of the k selection steps is shared by more maps.
SELECT_POSITIONS = 1 << 20
# Maps up to this height write the windowed x-sums straight into the transposed (b, Wp, H)
# buffer; taller ones write them in place and transpose in a second pass (a strided write with a
# long stride costs more than the extra pass).
STRIDED_MAX_HEIGHT = 64


def _check(maps: Tensor, size: int) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} does not fit maps of {h}x{w}")


def _pool_chunk(maps: Tensor, size: int, out: Tensor) -> None:
    """Window means of a chunk of CPU maps (b, H, W) (any float dtype) into `out` (b, Hp, Wp) float32.

    Separable float64 running sums: along x (the contiguous axis), windowed differences stored
    transposed as (b, Wp, H), running sums along y (now contiguous), windowed differences, then
    / size^2 and the cast to float32 in one pass that transposes back. The first difference of a
    running sum is the sum itself (s[size - 1] - 0 is exact), so no zero padding is needed. Maps
    holding NaN or inf (seen in their row totals: finite float32 values cannot overflow float64
    sums) are pooled window by window instead, each on its own, so a bad pixel only affects the
    windows that contain it and the other maps of the chunk keep their exact values.
    """
    b, h, w = maps.shape
    hp, wp = h - size + 1, w - size + 1
    c = torch.cumsum(maps, 2, dtype=torch.float64)  # (b, H, W): c[..., x] = sum of columns 0..x
    rows = torch.empty((b, wp, h), dtype=torch.float64)  # window sums along x, stored (b, Wp, H)
    if h <= STRIDED_MAX_HEIGHT:
        view = rows.transpose(1, 2)  # (b, H, Wp)
        view[:, :, 0] = c[:, :, size - 1]
        torch.sub(c[:, :, size:], c[:, :, :-size], out=view[:, :, 1:])
    else:
        flat = torch.empty((b, h, wp), dtype=torch.float64)
        flat[:, :, 0] = c[:, :, size - 1]
        torch.sub(c[:, :, size:], c[:, :, :-size], out=flat[:, :, 1:])
        rows.copy_(flat.transpose(1, 2))
    finite = bool(np.isfinite(c[:, :, -1].numpy()).all())  # row totals
    c = rows.cumsum(2)  # (b, Wp, H): running sums along y
    sums = torch.empty((b, wp, hp), dtype=torch.float64)  # window sums, stored (b, Wp, Hp)
    sums[:, :, 0] = c[:, :, size - 1]
    torch.sub(c[:, :, size:], c[:, :, :-size], out=sums[:, :, 1:])
    torch.div(sums.transpose(1, 2), size * size, out=out)  # float64 mean, rounded to float32 on store
    if not finite:  # a NaN / inf spreads through running sums: pool those maps window by window
        bad = ~torch.isfinite(maps).flatten(1).all(1)
        for i in torch.nonzero(bad)[:, 0].tolist():
            out[i] = F.avg_pool2d(maps[i, None, None].float(), size, stride=1)[0, 0]


def pool_map(maps: Tensor, size: int) -> Tensor:
    """Mean of every size x size window (stride 1): maps (B, H, W) -> (B, H - size + 1, W - size + 1).

    The value at (y, x) is the typicality of the patch with top-left corner (x, y). Computed on the
    CPU (the result is returned on maps' device), chunk by chunk, from separable float64 running
    sums, so the cost does not depend on the patch size (a 50 x 50 window over a 256 x 256 map
    costs what a 2 x 2 one does); a map holding NaN or inf is pooled window by window instead, so
    a bad pixel only affects the windows that contain it.
    """
    _check(maps, size)
    b, h, w = maps.shape
    src = maps.detach().cpu()
    out = torch.empty((b, h - size + 1, w - size + 1), dtype=torch.float32)
    step = max(1, CHUNK_PIXELS // (h * w))
    for s in range(0, b, step):
        _pool_chunk(src[s : s + step], size, out[s : s + step])
    return out.to(maps.device)


def _select(pooled: np.ndarray, size: int, boxes: np.ndarray, scores: np.ndarray) -> None:
    """Greedy top-k of pooled maps (b, Hp, Wp) float32, suppressed in place, into boxes (b, k, 4)
    int64 and scores (b, k) float32 (pre-filled with -1 / NaN).

    Each step takes every map's maximum (numpy's argmax: the first maximum in row-major order, the
    first NaN if any) and sets the kept box's neighbourhood (top-left corners within `size` on both
    axes: boxes that overlap or touch it) to -inf, a window slice per map. A map whose maximum is
    not finite (NaN, or nothing left but -inf) keeps no more boxes.
    """
    b, hp, wp = pooled.shape
    flat = pooled.reshape(b, hp * wp)  # a view: suppression below writes through to it
    every = np.arange(b)
    k = scores.shape[1]
    for j in range(k):
        idx = flat.argmax(1)  # (b,)
        best = flat[every, idx]
        ok = np.isfinite(best)  # a map with a non-finite maximum is untouched, so it stays so
        rows = slice(None) if ok.all() else np.flatnonzero(ok)
        if isinstance(rows, np.ndarray):
            if not len(rows):
                break
            idx, best = idx[rows], best[rows]
        y, x = np.divmod(idx, wp)
        boxes[rows, j, 0] = x
        boxes[rows, j, 1] = y
        boxes[rows, j, 2] = x + size
        boxes[rows, j, 3] = y + size
        scores[rows, j] = best
        if j == k - 1:
            break
        which = every[rows].tolist()
        y0, y1 = np.maximum(y - size, 0).tolist(), (y + size + 1).tolist()
        x0, x1 = np.maximum(x - size, 0).tolist(), (x + size + 1).tolist()
        for i, a, c, d, e in zip(which, y0, y1, x0, x1):
            pooled[i, a:c, d:e] = -np.inf


def top_patches(maps: Tensor, size: int, k: int) -> tuple[Tensor, Tensor]:
    """The k most typical non-overlapping size x size patches of each map, by greedy suppression.

    maps (B, H, W). Returns boxes (B, k, 4) long as (x0, y0, x1, y1) and scores (B, k) float32
    (the mean of the map over the patch), best first, on maps' device. Boxes that overlap *or
    touch* a kept box are suppressed (as in the paper). Where fewer than k patches fit, the
    remaining rows are (-1, -1, -1, -1) with a NaN score. Ties go to the first position in
    row-major order. A map holding a NaN keeps no patch.

    Runs on the CPU, chunk by chunk (pooling of a chunk, then its k selection steps while it is
    still in cache): per map the cost is a few passes over its pixels plus k argmax passes over
    its positions and k small window writes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check(maps, size)
    b, h, w = maps.shape
    hp, wp = h - size + 1, w - size + 1
    src = maps.detach().cpu()
    boxes = np.full((b, k, 4), -1, dtype=np.int64)
    scores = np.full((b, k), np.nan, dtype=np.float32)
    step = max(1, CHUNK_PIXELS // (h * w))  # maps pooled at once
    per = max(1, SELECT_POSITIONS // (hp * wp) // step) * step  # maps selected at once
    buf = torch.empty((min(per, b), hp, wp), dtype=torch.float32)
    for s in range(0, b, per):
        n = min(per, b - s)
        for t in range(0, n, step):
            _pool_chunk(src[s + t : s + min(t + step, n)], size, buf[t : min(t + step, n)])
        _select(buf[:n].numpy(), size, boxes[s : s + n], scores[s : s + n])
    return torch.from_numpy(boxes).to(maps.device), torch.from_numpy(scores).to(maps.device)


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


def box_mean(features: Tensor, boxes: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean feature over each box: features (B, F, h, w), boxes (B, k, 4) in feature-map pixels
    (x0, y0, x1, y1), exclusive ends, -1 rows allowed -> (B, k, F) (zeros for -1 rows).

    With `weights` (B, 1, h, w) >= 0, the weighted mean over each box instead (sum of w x feature
    over sum of w); a box whose weights are all zero gets its plain mean.

    Uses integral images, so the cost does not depend on the box size.
    """
    b, _, h, w = features.shape
    bx = boxes.clamp(min=0)
    x0, y0, x1, y1 = bx.unbind(-1)  # (B, k) each
    x1 = torch.maximum(x1.clamp(max=w), x0 + 1)
    y1 = torch.maximum(y1.clamp(max=h), y0 + 1)

    def box_sum(values: Tensor) -> Tensor:  # (B, C, h, w) -> (B, C, k)
        c = values.shape[1]
        flat = F.pad(values.float().cumsum(2).cumsum(3), (1, 0, 1, 0)).reshape(b, c, -1)  # (B, C, (h+1)(w+1))

        def corner(y: Tensor, x: Tensor) -> Tensor:
            return flat.gather(2, (y * (w + 1) + x)[:, None, :].expand(b, c, -1))

        return corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)

    area = ((x1 - x0) * (y1 - y0)).float()[:, None, :]
    mean = box_sum(features) / area  # (B, F, k)
    if weights is not None:
        if weights.shape != (b, 1, h, w):
            raise ValueError(f"weights must be ({b}, 1, {h}, {w}), got {tuple(weights.shape)}")
        wf = weights.float().clamp(min=0)
        mass = box_sum(wf)  # (B, 1, k)
        mean = torch.where(
            mass > 0, box_sum(features.float() * wf) / mass.clamp(min=torch.finfo(torch.float32).tiny), mean
        )
    mean = mean.transpose(1, 2)  # (B, k, F)
    return torch.where((boxes < 0).any(-1, keepdim=True), torch.zeros_like(mean), mean)


def typical_weights(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Pooling weights that follow what is typical: maps (B, H, W) resampled to `size` (h, w) by
    area averaging, minus each map's median, negative parts zeroed -> (B, 1, h, w). With them
    `box_mean` averages a patch's features over the part of the patch that scores above the
    image's typical level (the patch's reason to be chosen) instead of over the whole patch."""
    m = F.interpolate(maps[:, None].float(), size=size, mode="area")
    return (m - m.flatten(1).median(dim=1).values[:, None, None, None]).clamp(min=0)
