"""Patch ranking speed: gcmine's vectorised greedy top-k against the reference approach.

Reference (as in the paper's code): one pandas DataFrame row per patch position with its pooled
typicality, sorted by it; then k times: keep the first row and filter out of the frame every row
whose box overlaps or touches the kept one. gcmine: `gcmodels.mining.patches.top_patches` (float64
running-sum pooling in cache-sized chunks, then k argmax / window-suppression steps), called on
batches of 256 maps as the rank task calls it once per shard of up to 256 maps.

Both rank the same smooth random maps; the reference pools them as the paper's code does
(`AvgPool2d`, stride 1), and its time is shown in full and for the DataFrame ranking alone. The
benchmark asserts that the two select identical boxes, in the same order, for every map both
ranked.

Times are process CPU time (one torch thread), so that other jobs on a shared machine do not
enter the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/patch_ranking.py [--k 5]
Target (issue 7): >= 100x the reference's images/s, identical selections.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gcmodels.mining.patches import top_patches
from gcmodels.runtime import configure_torch


def reference_top_patches(pooled: np.ndarray, size: int, k: int) -> list[tuple[int, int, int, int]]:
    """The reference approach on one pooled map (Hp, Wp), as in the paper's code: one DataFrame row
    per patch position, sorted by typicality; then k times: keep the first row and drop every row
    whose box overlaps or touches it (inclusive ends) from the frame."""
    hp, wp = pooled.shape
    ys, xs = np.divmod(np.arange(hp * wp), wp)
    df = pd.DataFrame({"x_start": xs, "y_start": ys, "x_end": xs + size, "y_end": ys + size, "V": pooled.reshape(-1)})
    df = df.sort_values(by=["V"], ascending=False, kind="stable").reset_index(drop=True)
    kept: list[tuple[int, int, int, int]] = []
    while len(kept) < k and len(df):
        top = df.iloc[0]
        kept.append((int(top["x_start"]), int(top["y_start"]), int(top["x_end"]), int(top["y_end"])))
        hit = (
            (df["x_start"] <= top["x_end"])
            & (df["x_end"] >= top["x_start"])
            & (df["y_start"] <= top["y_end"])
            & (df["y_end"] >= top["y_start"])
        )
        df = df[~hit].reset_index(drop=True)
    return kept


def smooth_maps(n: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, side, side), generator=g)
    return F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)[:, 0]


def bench(side: int, size: int, k: int, n_ours: int, n_ref: int, batch: int) -> dict:
    maps = smooth_maps(n_ours, side, seed=side)
    top_patches(maps[:batch], size, k)  # warm-up
    start = time.process_time()
    boxes = torch.cat([top_patches(maps[s : s + batch], size, k)[0] for s in range(0, n_ours, batch)])
    ours = time.process_time() - start

    start = time.process_time()
    pooled_ref = [F.avg_pool2d(maps[i : i + 1, None], size, stride=1)[0, 0].numpy() for i in range(n_ref)]
    pooling = time.process_time() - start
    start = time.process_time()
    ref = [reference_top_patches(p, size, k) for p in pooled_ref]
    ranking = time.process_time() - start
    for i, sel in enumerate(ref):
        got = [tuple(int(v) for v in b) for b in boxes[i].tolist() if b[0] >= 0]
        assert got == sel, f"map {i} ({side}x{side}, patch {size}): gcmine {got} != reference {sel}"
    return {"ours": n_ours / ours, "ref": n_ref / (pooling + ranking), "ref_rank": n_ref / ranking, "checked": n_ref}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256, help="maps per top_patches call (rank: one shard, <= 256)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    configure_torch(args.threads)
    # (map side, patch, maps for gcmine, maps for reference); 32x32 with patch 6 is the default pipeline
    cases = [(32, 6, 8192, 256), (64, 8, 4096, 128), (256, 50, 512, 24)]
    print(f"top-{args.k} non-overlapping patches per map, {torch.get_num_threads()} torch thread(s)")
    print(
        f"{'map':>9}{'patch':>7}{'gcmine img/s':>14}{'reference img/s':>17}{'speed-up':>10}"
        f"{'ref. ranking only':>19}{'speed-up':>10}{'identical':>11}"
    )
    for side, size, n_ours, n_ref in cases:
        r = bench(side, size, args.k, n_ours, n_ref, args.batch)
        print(
            f"{side:>4}x{side:<4}{size:>7}{r['ours']:>14.1f}{r['ref']:>17.2f}{r['ours'] / r['ref']:>9.0f}x"
            f"{r['ref_rank']:>19.2f}{r['ours'] / r['ref_rank']:>9.0f}x{str(r['checked']) + '/' + str(r['checked']):>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
