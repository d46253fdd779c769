"""Shape buckets under data.resize=short_side (issue 20): how many working shapes a collection
of mixed aspect ratios makes, and how full its batches are, when the long side is rounded to
multiples of 8 px (the VAE factor) against 32 and 64 px buckets (data.bucket; 64 is the default
with model.base). No model runs: shapes come from `gcmodels.data.working_size`.

    .venv/bin/python benchmarks/shape_buckets.py [--images 10000] [--resolution 256 512 1024]

Batches form per shape: fine-tuning over the whole set (train.batch_size images a batch), scoring
per shard (data.shard_size images; score.batch_size inputs = that / (2 N) images a batch at N
draws), features per shard (rank.feature_batch / rank.feature_draws images a forward). Batch fill
= images / (batches x images a batch): 1.0 means no short tail batch. Distortion = the largest
|working aspect / original aspect - 1| over the images (what a bucket costs in shape).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcmodels.data import working_size

# A photo archive: common camera and screen aspect ratios, landscape and portrait, with the jitter
# of crops and scans (sd 3 %), short sides 480-4000 px.
ARCHIVE = {4 / 3: 0.3, 3 / 2: 0.25, 16 / 9: 0.1, 1.0: 0.1, 3 / 4: 0.12, 2 / 3: 0.1, 9 / 16: 0.03}


def archive_sizes(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    ratios = rng.choice(list(ARCHIVE), size=n, p=list(ARCHIVE.values())) * rng.normal(1.0, 0.03, n)
    short = rng.integers(480, 4000, n)
    return [(int(s * r), int(s)) if r >= 1 else (int(s), int(s / r)) for r, s in zip(ratios, short)]


def mixed_sizes(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Issue 21's mixed-shape set: widths 0.75-2x and heights 0.75-1.5x of 80 px."""
    return [(int(80 * w), int(80 * h)) for w, h in zip(rng.uniform(0.75, 2.0, n), rng.uniform(0.75, 1.5, n))]


def fill(groups: Counter, per_batch: int) -> tuple[int, float]:
    batches = sum(math.ceil(c / per_batch) for c in groups.values())
    return batches, sum(groups.values()) / (batches * per_batch)


def row(sizes: list[tuple[int, int]], resolution: int, multiple: int, args) -> str:
    shapes = [working_size(w, h, resolution, "short_side", multiple) for w, h in sizes]
    distortion = max(abs((sw / sh) / (w / h) - 1) for (w, h), (sw, sh) in zip(sizes, shapes))
    _, train_fill = fill(Counter(shapes), args.train_batch)
    score_imgs, feat_imgs = max(1, args.score_batch // (2 * args.draws)), max(1, args.feature_batch // 8)
    shards = [Counter(shapes[i : i + args.shard_size]) for i in range(0, len(shapes), args.shard_size)]
    s_b = [fill(g, score_imgs) for g in shards]
    f_b = [fill(g, feat_imgs) for g in shards]
    score_fill = len(shapes) / sum(b * score_imgs for b, _ in s_b)
    feat_fill = len(shapes) / sum(b * feat_imgs for b, _ in f_b)
    per_shard = np.mean([len(g) for g in shards])
    return (
        f"| {resolution} | {multiple} | {len(set(shapes))} | {per_shard:.1f} | {train_fill:.3f} | {score_fill:.3f} |"
        f" {feat_fill:.3f} | {distortion:.1%} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--resolution", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--multiples", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--score-batch", type=int, default=128)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--feature-batch", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for name, sizes in (
        ("photo archive", archive_sizes(args.images, rng)),
        ("issue 21 mixed", mixed_sizes(args.images, rng)),
    ):
        print(f"\n## {name}: {args.images} images (seed {args.seed})\n")
        print(
            "| resolution | long side multiple | shapes | shapes per shard | train fill | score fill | feature fill | max distortion |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for res in args.resolution:
            for m in args.multiples:
                print(row(sizes, res, m, args))


if __name__ == "__main__":
    main()
