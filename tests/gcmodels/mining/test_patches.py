"""Tests of patch pooling, greedy non-overlapping patch selection, box scaling and box means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gcmodels.mining.patches import box_mean, pool_map, scale_boxes, top_patches, typical_weights


# ------------------------------------------------------------------ pool_map
def test_pool_map_hand_computed_window_means() -> None:
    maps = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    # window with top-left (y, x) covers 4y+x, 4y+x+1, 4y+x+4, 4y+x+5 -> mean 4y + x + 2.5
    expected = torch.tensor([[2.5, 3.5, 4.5], [6.5, 7.5, 8.5], [10.5, 11.5, 12.5]])
    out = pool_map(maps, 2)
    assert out.shape == (1, 3, 3)
    assert torch.allclose(out[0], expected)
    assert torch.allclose(pool_map(maps, 1), maps)
    assert torch.allclose(pool_map(maps, 4), torch.tensor([[[7.5]]]))
    # size 3: mean of a 3x3 block of arange = its centre value
    assert torch.allclose(pool_map(maps, 3)[0], torch.tensor([[5.0, 6.0], [9.0, 10.0]]))


def test_pool_map_non_square_and_batched() -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 5, 7)).astype(np.float32)
    out = pool_map(torch.from_numpy(arr), 3).numpy()
    assert out.shape == (3, 3, 5)
    for b in range(3):
        for y in range(3):
            for x in range(5):
                assert out[b, y, x] == pytest.approx(arr[b, y : y + 3, x : x + 3].mean(), abs=1e-5)


@pytest.mark.parametrize(("h", "w", "size"), [(64, 64, 8), (40, 33, 13), (96, 96, 50), (9, 9, 9)])
def test_pool_map_equals_window_by_window_average_pooling(h: int, w: int, size: int) -> None:
    # running sums must give the same window means as pooling each window separately
    maps = torch.randn(3, h, w, generator=torch.Generator().manual_seed(h + size)) * 5 + 2
    expected = torch.nn.functional.avg_pool2d(maps[:, None], size, stride=1)[:, 0]
    out = pool_map(maps, size)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_pool_map_nan_only_affects_windows_that_contain_it() -> None:
    maps = torch.ones(1, 8, 8)
    maps[0, 0, 0] = float("nan")
    out = pool_map(maps, 3)[0]
    assert torch.isnan(out[0, 0])
    finite = torch.ones_like(out, dtype=torch.bool)
    finite[0, 0] = False
    assert torch.equal(out[finite], torch.ones(int(finite.sum())))


@pytest.mark.parametrize("size", [0, 5, -1])
def test_pool_map_rejects_sizes_that_do_not_fit(size: int) -> None:
    with pytest.raises(ValueError, match="patch size"):
        pool_map(torch.zeros(1, 4, 6), size)


def test_pool_map_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="maps must be"):
        pool_map(torch.zeros(4, 4), 2)


# ------------------------------------------------------------------ top_patches on toy maps
def test_top_patches_single_hot_spot() -> None:
    m = torch.zeros(1, 10, 10)
    m[0, 4:7, 6:9] = 1.0
    boxes, scores = top_patches(m, 3, 1)
    assert boxes.dtype == torch.long and boxes.shape == (1, 1, 4)
    assert scores.dtype == torch.float32 and scores.shape == (1, 1)
    assert boxes[0, 0].tolist() == [6, 4, 9, 7]
    assert scores[0, 0].item() == pytest.approx(1.0)


def test_top_patches_two_far_hot_spots_kept_in_order() -> None:
    m = torch.zeros(1, 12, 14)
    m[0, 1:4, 1:4] = 2.0  # best, top-left (x=1, y=1)
    m[0, 6:9, 10:13] = 1.0  # second, top-left (x=10, y=6)
    boxes, scores = top_patches(m, 3, 2)
    assert boxes[0].tolist() == [[1, 1, 4, 4], [10, 6, 13, 9]]
    assert scores[0].tolist() == pytest.approx([2.0, 1.0])


def test_top_patches_touching_boxes_are_suppressed() -> None:
    # The second block's top-left corner is exactly `size` columns from the first: the boxes
    # would touch, so it is suppressed; the best allowed box is one column further (distance 4).
    m = torch.zeros(1, 8, 12)
    m[0, 2:5, 1:4] = 2.0
    m[0, 2:5, 4:7] = 1.0
    boxes, scores = top_patches(m, 3, 2)
    assert boxes[0].tolist() == [[1, 2, 4, 5], [5, 2, 8, 5]]
    assert scores[0].tolist() == pytest.approx([2.0, 6.0 / 9.0])


def test_top_patches_distance_size_plus_one_is_allowed() -> None:
    m = torch.zeros(1, 8, 12)
    m[0, 2:5, 1:4] = 2.0
    m[0, 2:5, 5:8] = 1.0  # top-left 4 = size + 1 columns away: a one-pixel gap
    boxes, scores = top_patches(m, 3, 2)
    assert boxes[0].tolist() == [[1, 2, 4, 5], [5, 2, 8, 5]]
    assert scores[0].tolist() == pytest.approx([2.0, 1.0])


def test_top_patches_diagonal_touch_is_suppressed() -> None:
    m = torch.zeros(1, 10, 10)
    m[0, 1:4, 1:4] = 2.0
    m[0, 4:7, 4:7] = 1.0  # shares only the corner pixel boundary with the first box
    boxes, _scores = top_patches(m, 3, 2)
    assert boxes[0, 0].tolist() == [1, 1, 4, 4]
    assert boxes[0, 1].tolist() != [4, 4, 7, 7]
    x0, y0 = boxes[0, 1, :2].tolist()
    assert max(abs(x0 - 1), abs(y0 - 1)) > 3


def test_top_patches_fewer_fitting_than_k() -> None:
    m = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(0))
    boxes, scores = top_patches(m, 3, 3)
    # every top-left corner (0..2, 0..2) is within 3 of any other: only one patch fits
    assert (boxes[0, 0] >= 0).all()
    assert boxes[0, 1:].tolist() == [[-1, -1, -1, -1], [-1, -1, -1, -1]]
    assert math.isfinite(scores[0, 0].item())
    assert torch.isnan(scores[0, 1:]).all()


def test_top_patches_ties_go_to_first_row_major() -> None:
    m = torch.ones(1, 6, 6)
    boxes, scores = top_patches(m, 2, 2)
    assert boxes[0, 0].tolist() == [0, 0, 2, 2]
    # suppressed: |dx| <= 2 and |dy| <= 2; the first free corner in row-major order is (y=0, x=3)
    assert boxes[0, 1].tolist() == [3, 0, 5, 2]
    assert scores[0].tolist() == pytest.approx([1.0, 1.0])


def test_top_patches_batch_is_independent() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.zeros(10, 10)
    a[4:7, 6:9] = 1.0
    b = torch.rand(10, 10, generator=g)
    c = torch.ones(10, 10)
    batch = torch.stack([a, b, c])
    boxes, scores = top_patches(batch, 3, 4)
    for i, single in enumerate([a, b, c]):
        bi, si = top_patches(single[None], 3, 4)
        assert torch.equal(boxes[i], bi[0])
        assert torch.equal(torch.nan_to_num(scores[i], nan=-7.0), torch.nan_to_num(si[0], nan=-7.0))


def test_top_patches_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        top_patches(torch.zeros(1, 4, 4), 2, 0)


# ------------------------------------------------------------------ top_patches vs brute force
def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Pixels between two boxes (exclusive ends): 0 = touching, < 0 = overlapping."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _reference(pooled: np.ndarray, size: int, k: int) -> tuple[list, list]:
    hp, wp = pooled.shape
    order = sorted((-float(pooled[y, x]), y, x) for y in range(hp) for x in range(wp))
    kept: list[tuple[int, int, int, int]] = []
    scores: list[float] = []
    for neg, y, x in order:
        box = (x, y, x + size, y + size)
        if all(_gap(box, other) >= 1 for other in kept):
            kept.append(box)
            scores.append(-neg)
            if len(kept) == k:
                break
    while len(kept) < k:
        kept.append((-1, -1, -1, -1))
        scores.append(float("nan"))
    return [list(b) for b in kept], scores


def test_top_patches_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(42)
    for trial in range(20):
        h, w = (int(v) for v in rng.integers(3, 21, size=2))
        size = int(rng.integers(1, min(h, w) + 1))
        k = int(rng.integers(1, 7))
        if trial % 3 == 0:  # integer maps: many ties
            arr = rng.integers(0, 3, size=(h, w)).astype(np.float32)
        else:
            arr = rng.normal(size=(h, w)).astype(np.float32)
        maps = torch.from_numpy(arr)[None]
        boxes, scores = top_patches(maps, size, k)
        pooled = pool_map(maps, size)[0].numpy()
        ref_boxes, ref_scores = _reference(pooled, size, k)
        assert boxes[0].tolist() == ref_boxes, f"trial {trial}: {h}x{w} size {size} k {k}"
        np.testing.assert_array_equal(scores[0].numpy(), np.asarray(ref_scores, dtype=np.float32))
        # kept boxes never overlap or touch
        kept = [tuple(b) for b in boxes[0].tolist() if b[0] >= 0]
        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                assert _gap(kept[i], kept[j]) >= 1


# ------------------------------------------------------------------ scale_boxes
def test_scale_boxes_identity() -> None:
    boxes = np.array([[[0, 0, 3, 3], [2, 1, 10, 8], [-1, -1, -1, -1]]])
    out = scale_boxes(boxes, (10, 8), (10, 8))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, boxes)


def test_scale_boxes_two_x_up_and_down() -> None:
    up = scale_boxes(np.array([[1, 2, 4, 5]]), (10, 10), (20, 20))
    np.testing.assert_array_equal(up, [[2, 4, 8, 10]])
    # 3*0.5=1.5 -> 1, 5*0.5=2.5 -> 2, 8*0.5=4 -> 4, 11*0.5=5.5 -> 6
    down = scale_boxes(np.array([[3, 5, 8, 11]]), (20, 20), (10, 10))
    np.testing.assert_array_equal(down, [[1, 2, 4, 6]])
    # exact halves and the full image
    np.testing.assert_array_equal(scale_boxes(np.array([[0, 0, 20, 20]]), (20, 20), (10, 10)), [[0, 0, 10, 10]])


def test_scale_boxes_small_boxes_stay_non_empty() -> None:
    out = scale_boxes(np.array([[13, 13, 14, 14], [10, 10, 11, 11], [99, 0, 100, 1]]), (100, 100), (10, 10))
    np.testing.assert_array_equal(out, [[1, 1, 2, 2], [1, 1, 2, 2], [9, 0, 10, 1]])


def test_scale_boxes_per_image_sizes() -> None:
    boxes = np.array([[[2, 2, 6, 6]], [[2, 2, 6, 6]]])  # (2, 1, 4)
    wid = np.array([[16], [4]])
    hei = np.array([[8], [4]])
    out = scale_boxes(boxes, (8, 8), (wid, hei))
    np.testing.assert_array_equal(out, [[[4, 2, 12, 6]], [[1, 1, 3, 3]]])


def test_scale_boxes_preserves_missing_rows() -> None:
    boxes = np.array([[[1, 1, 3, 3], [-1, -1, -1, -1]], [[-1, -1, -1, -1], [0, 0, 8, 8]]])
    out = scale_boxes(boxes, (8, 8), (np.array([[16], [3]]), np.array([[16], [5]])))
    np.testing.assert_array_equal(out[0, 1], [-1, -1, -1, -1])
    np.testing.assert_array_equal(out[1, 0], [-1, -1, -1, -1])
    np.testing.assert_array_equal(out[0, 0], [2, 2, 6, 6])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 3, 5])


def test_scale_boxes_random_results_inside_target_and_covering() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        fw, fh = (int(v) for v in rng.integers(1, 60, size=2))
        tw, th = (int(v) for v in rng.integers(1, 60, size=2))
        x0 = int(rng.integers(0, fw))
        y0 = int(rng.integers(0, fh))
        x1 = int(rng.integers(x0 + 1, fw + 1))
        y1 = int(rng.integers(y0 + 1, fh + 1))
        out = scale_boxes(np.array([[x0, y0, x1, y1]]), (fw, fh), (tw, th))[0]
        a0, b0, a1, b1 = out.tolist()
        assert 0 <= a0 < a1 <= tw and 0 <= b0 < b1 <= th, (out, fw, fh, tw, th)
        # covers every target pixel the source box touches
        sx, sy = tw / fw, th / fh
        assert a0 <= x0 * sx + 1e-6 and a1 >= min(x1 * sx, tw) - 1e-6
        assert b0 <= y0 * sy + 1e-6 and b1 >= min(y1 * sy, th) - 1e-6


# ------------------------------------------------------------------ box_mean
def test_box_mean_matches_explicit_slicing() -> None:
    rng = np.random.default_rng(3)
    b, f, h, w, k = 3, 5, 7, 9, 6
    feats = torch.from_numpy(rng.normal(size=(b, f, h, w)).astype(np.float32))
    boxes = np.zeros((b, k, 4), dtype=np.int64)
    for i in range(b):
        for j in range(k):
            x0 = rng.integers(0, w)
            y0 = rng.integers(0, h)
            boxes[i, j] = [x0, y0, rng.integers(x0 + 1, w + 1), rng.integers(y0 + 1, h + 1)]
    out = box_mean(feats, torch.from_numpy(boxes))
    assert out.shape == (b, k, f)
    for i in range(b):
        for j in range(k):
            x0, y0, x1, y1 = boxes[i, j]
            expected = feats[i, :, y0:y1, x0:x1].mean(dim=(1, 2))
            assert torch.allclose(out[i, j], expected, atol=1e-5), (i, j, boxes[i, j])


def test_box_mean_missing_rows_are_zero() -> None:
    feats = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) + 5.0
    boxes = torch.tensor([[[0, 0, 6, 6], [-1, -1, -1, -1]], [[-1, -1, -1, -1], [2, 3, 4, 5]]])
    out = box_mean(feats, boxes)
    assert torch.equal(out[0, 1], torch.zeros(4))
    assert torch.equal(out[1, 0], torch.zeros(4))
    assert torch.allclose(out[0, 0], feats[0].mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(out[1, 1], feats[1, :, 3:5, 2:4].mean(dim=(1, 2)), atol=1e-5)


def test_box_mean_weighted_matches_explicit_weighted_average() -> None:
    rng = np.random.default_rng(5)
    b, f, h, w = 2, 3, 8, 10
    feats = torch.from_numpy(rng.normal(size=(b, f, h, w)).astype(np.float32))
    weights = torch.from_numpy(rng.uniform(0, 2, size=(b, 1, h, w)).astype(np.float32))
    weights[0, 0, 0:4, 0:5] = 0.0  # box (0, 0, 5, 4) of image 0 weighs nothing: its plain mean
    boxes = torch.tensor([[[0, 0, 5, 4], [2, 1, 9, 7], [-1, -1, -1, -1]], [[3, 3, 10, 8], [0, 0, 1, 1], [4, 0, 6, 8]]])
    out = box_mean(feats, boxes, weights)
    assert out.shape == (b, 3, f)
    assert torch.allclose(out[0, 0], feats[0, :, 0:4, 0:5].mean(dim=(1, 2)), atol=1e-5)
    assert torch.equal(out[0, 2], torch.zeros(f))
    for i, j in [(0, 1), (1, 0), (1, 1), (1, 2)]:
        x0, y0, x1, y1 = boxes[i, j].tolist()
        wb = weights[i, :, y0:y1, x0:x1]
        expected = (feats[i, :, y0:y1, x0:x1] * wb).sum(dim=(1, 2)) / wb.sum()
        assert torch.allclose(out[i, j], expected, atol=1e-5), (i, j)
    with pytest.raises(ValueError, match="weights must be"):
        box_mean(feats, boxes, weights[:, :, :4])


def test_typical_weights_follow_the_part_of_the_map_above_its_median() -> None:
    maps = torch.zeros(2, 8, 8)
    maps[0, 2:4, 4:6] = 3.0  # a typical spot on a flat map
    maps[1] = torch.arange(64, dtype=torch.float32).reshape(8, 8)  # a ramp: the upper half counts
    w = typical_weights(maps, (4, 4))
    assert w.shape == (2, 1, 4, 4) and (w >= 0).all()
    assert w[0, 0, 1, 2] == 3.0 and w[0].sum() == 3.0  # area-averaged: the 2x2 spot is one cell
    assert (w[1, 0, :2] == 0).all() and (w[1, 0, 2:] > 0).all()
    # pooling with them: the feature of a patch around the spot is the spot's feature
    feats = torch.zeros(2, 1, 4, 4)
    feats[0, 0, 1, 2] = 7.0
    pooled = box_mean(feats, torch.tensor([[[0, 0, 4, 4]], [[0, 0, 4, 4]]]), w)
    assert pooled[0, 0, 0] == 7.0 and pooled[1, 0, 0] == 0.0


def test_top_patches_batched_random_maps_match_sequential_reference() -> None:
    # larger maps, many per call, patch sizes and k as the pipeline uses them: the vectorised
    # selection of every map equals the one-map-at-a-time reference (sort, then keep a patch
    # unless it overlaps or touches one already kept)
    g = torch.Generator().manual_seed(7)
    for side, size, k in [(32, 6, 5), (64, 8, 5), (48, 20, 3)]:
        raw = torch.randn(12, side, side, generator=g)
        maps = torch.nn.functional.avg_pool2d(raw[:, None], 5, stride=1, padding=2, count_include_pad=False)[:, 0]
        boxes, scores = top_patches(maps, size, k)
        pooled = pool_map(maps, size).numpy()
        for i in range(maps.shape[0]):
            ref_boxes, ref_scores = _reference(pooled[i], size, k)
            assert boxes[i].tolist() == ref_boxes, f"map {i}, {side}x{side}, patch {size}"
            np.testing.assert_array_equal(scores[i].numpy(), np.asarray(ref_scores, dtype=np.float32))


# ------------------------------------------------------------------ chunked fast path
def _running_sum_pool(maps: torch.Tensor, size: int) -> torch.Tensor:
    """The float64 running-sum pooling written plainly (zero-padded cumsums, transposes): the
    chunked implementation must reproduce it bit for bit."""
    c = torch.nn.functional.pad(maps.double().cumsum(2), (1, 0))
    rows = (c[:, :, size:] - c[:, :, :-size]).transpose(1, 2).contiguous()
    c = torch.nn.functional.pad(rows.cumsum(2), (1, 0))
    return (c[:, :, size:] - c[:, :, :-size]).transpose(1, 2).div(size * size).float().contiguous()


@pytest.mark.parametrize(
    ("b", "h", "w", "size", "dtype"),
    [
        (300, 32, 32, 6, torch.float32),
        (40, 70, 90, 13, torch.float32),
        (5, 130, 100, 50, torch.float32),
        (20, 17, 23, 5, torch.float64),
        (20, 17, 23, 5, torch.float16),
    ],
)
def test_pool_map_bit_identical_to_plain_running_sums(b: int, h: int, w: int, size: int, dtype: torch.dtype) -> None:
    # several chunks (64 maps of 32x32 per chunk), both ways of transposing (height <= 64 or not),
    # magnitudes from 1e-4 to 1e2 (typicality values of a trained model are small)
    g = torch.Generator().manual_seed(b + h + size)
    scale = 10.0 ** torch.empty(b, 1, 1).uniform_(-4, 2, generator=g)
    maps = (torch.randn(b, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    out = pool_map(maps, size)
    expected = _running_sum_pool(maps, size)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))


def test_top_patches_same_for_any_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    import gcmodels.mining.patches as patches

    g = torch.Generator().manual_seed(3)
    raw = torch.randn(50, 1, 40, 40, generator=g)
    maps = torch.nn.functional.avg_pool2d(raw, 5, stride=1, padding=2, count_include_pad=False)[:, 0]
    maps[7] = torch.randint(0, 2, (40, 40), generator=g).float()  # ties
    boxes, scores = top_patches(maps, 6, 5)
    pooled = pool_map(maps, 6)
    for chunk, select in [(1600, 1225), (3 * 1600, 7 * 1225), (1, 1), (10**9, 10**9)]:
        monkeypatch.setattr(patches, "CHUNK_PIXELS", chunk)
        monkeypatch.setattr(patches, "SELECT_POSITIONS", select)
        b2, s2 = top_patches(maps, 6, 5)
        assert torch.equal(b2, boxes) and torch.equal(s2, scores), (chunk, select)
        assert torch.equal(pool_map(maps, 6), pooled), (chunk, select)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_map_does_not_change_the_others(bad: float) -> None:
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(6, 12, 12, generator=g)
    alone_boxes, alone_scores = top_patches(maps, 3, 4)
    alone_pooled = pool_map(maps, 3)
    maps[2, 5, 5] = bad
    boxes, scores = top_patches(maps, 3, 4)
    pooled = pool_map(maps, 3)
    others = [0, 1, 3, 4, 5]
    assert torch.equal(boxes[others], alone_boxes[others])
    assert torch.equal(scores[others], alone_scores[others])
    assert torch.equal(pooled[others], alone_pooled[others])
    # the bad map: windows without the pixel keep their means (up to float32 pooling)
    hit = torch.zeros(10, 10, dtype=torch.bool)
    hit[3:6, 3:6] = True
    torch.testing.assert_close(pooled[2][~hit], alone_pooled[2][~hit], atol=1e-6, rtol=1e-6)
    assert not torch.isfinite(pooled[2][hit]).any()
    if bad != bad:  # NaN: the maximum of its pooled map is NaN, so the map keeps no patch
        assert (boxes[2] == -1).all() and torch.isnan(scores[2]).all()
    elif bad > 0:  # +inf: the best windows are infinite, not a typicality: no patch either
        assert (boxes[2] == -1).all()
    else:  # -inf: windows holding it are never picked while a finite one is left
        kept = boxes[2][boxes[2, :, 0] >= 0]
        assert len(kept) >= 1 and torch.isfinite(scores[2, : len(kept)]).all()
        for x0, y0, _, _ in kept.tolist():
            assert not (3 <= y0 <= 5 and 3 <= x0 <= 5)
