"""Passes against quality for plain and adaptive scoring, on a run root adaptive_draws.py left.

Loads the run's trained model and working images, scores them with gcmodels directly (no flow:
no features, no elements, so no purity here) for plain N in --plain and adaptive scoring at N
for each z in --z, and compares each variant's top-K patch sets (per label, rank's greedy
selection of `per_image` patches per image at the run's patch size) with those of a reference
maps part (plain at 4N, written by adaptive_draws.py's run). Pointing: rank-0 patch contains the
motif centre (truth boxes from the run's dataset, scaled to the working images).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptive_curve.py --work /tmp/gcmine-adaptive-XXXX \\
        --ref maps/part-00000-<4N key>.parquet --plain 4 8 16 --z 2 1 0.5
    # the rules of gcmodels.mining.adaptive, each as RULE:Z[:DECIDE[:K[:VARIANCE]]] (K: the rule's top_k,
    # default --top-k; VARIANCE: own (default) or moderated; the overlap columns compare the top
    # --compare-k patches per label)
    ... adaptive_curve.py --work W --ref R --plain 16 --adaptive elimination:2 decision:2:1:1000 --compare-k 10 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
import torch
from ground_truth import write_dataset

from gcmine.tasks.infra.artifacts import read_images, unpack_map_rows
from gcmine.tasks.infra.storage import RunStore
from gcmodels.diffusion.families import load_any_model
from gcmodels.mining.adaptive import AdaptiveRule, adaptive_maps
from gcmodels.mining.patches import top_patches
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import configure_torch


def selection(maps: np.ndarray, labels: np.ndarray, patch: int, per_image: int, k: int):
    """rank-0 boxes (n, 4) and each label's top-k patches as a set of (image, x0, y0)
    (k a list: one such dict per k)."""
    if isinstance(k, list):
        r0, _ = selection(maps, labels, patch, per_image, 1)
        return r0, [selection(maps, labels, patch, per_image, kk)[1] for kk in k]
    boxes, scores = top_patches(torch.from_numpy(maps), patch, per_image)
    b, s = boxes.numpy(), scores.numpy()
    rows = pd.DataFrame(
        {
            "img": np.repeat(np.arange(len(maps)), per_image),
            "label": np.repeat(labels, per_image),
            "x0": b[..., 0].ravel(),
            "y0": b[..., 1].ravel(),
            "s": s.ravel(),
        }
    ).dropna()
    top = rows.sort_values("s", ascending=False, kind="stable").groupby("label").head(k)
    return b[:, 0], {
        lab: set(map(tuple, g[["img", "x0", "y0"]].to_numpy().tolist())) for lab, g in top.groupby("label")
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="adaptive_draws.py's work folder (dataset/ and run/)")
    ap.add_argument("--ref", required=True, help="the reference maps part (plain at 4N), relative to run/")
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--plain", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument("--z", type=float, nargs="*", default=[2.0, 1.0, 0.5])
    ap.add_argument("--first", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--patch", type=int, default=6)
    ap.add_argument("--per-label", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument(
        "--adaptive", nargs="*", help="RULE:Z[:DECIDE[:K[:VARIANCE]]] (replaces --z, which runs elimination:Z)"
    )
    ap.add_argument("--compare-k", type=int, nargs="*", help="top-K sizes of the overlap columns (default --top-k)")
    args = ap.parse_args()
    configure_torch(1)
    work = Path(args.work)
    store = RunStore(str(work / "run"))
    model = load_any_model(work / "run" / "model").eval()
    shards = sorted(p.name for p in (work / "run" / "images").glob("*.parquet"))
    meta, pixels = read_images(store, shards)
    ref_df = store.read_parquet(args.ref).set_index("image_id").loc[meta["image_id"]].reset_index()
    ref_maps = np.stack(unpack_map_rows(ref_df))
    labels = meta["label"].to_numpy()
    truth = (
        write_dataset(work / "truth-check", args.per_label, args.size, 0).set_index("image_id").loc[meta["image_id"]]
    )
    scale = pixels.shape[1] / args.size
    cx = ((truth["x0"] + truth["x1"]) / 2 * scale).to_numpy()
    cy = ((truth["y0"] + truth["y1"]) / 2 * scale).to_numpy()
    x0 = model.encode(torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))))
    cond = model.label_index(list(labels))
    ks = args.compare_k or [args.top_k]
    _, ref_tops = selection(ref_maps, labels, args.patch, args.per_image, ks)
    ref_r0, _ = selection(ref_maps, labels, args.patch, args.per_image, 1)

    def report(name: str, maps: np.ndarray, passes: int, seconds: float) -> None:
        r0, tops = selection(maps, labels, args.patch, args.per_image, ks)
        point = np.mean((r0[:, 0] <= cx) & (cx < r0[:, 2]) & (r0[:, 1] <= cy) & (cy < r0[:, 3]))
        same_r0 = np.mean(np.abs(r0[:, :2] - ref_r0[:, :2]).max(1) <= args.patch // 2)
        overlaps = "".join(
            f"{np.mean([len(top.get(lab, set()) & ref[lab]) / len(ref[lab]) for lab in ref]):>11.3f}"
            for top, ref in zip(tops, ref_tops)
        )
        print(
            f"{name:<34}{passes:>9}{passes / len(maps):>8.1f}{passes / (2 * args.draws * len(maps)):>6.2f}"
            f"{point:>9.3f}{same_r0:>8.3f}{overlaps}{seconds:>9.1f}",
            flush=True,
        )

    print(f"{len(meta)} images, {args.per_image} patches per image, patch {args.patch} px")
    head = "".join(f"{'overlap@' + str(k):>11}" for k in ks)
    print(f"{'variant':<34}{'passes':>9}{'/image':>8}{'vs N':>6}{'point':>9}{'r0 ~4N':>8}{head}{'seconds':>9}")
    report("reference (--ref, passes not known)", ref_maps, 0, 0.0)
    for n in args.plain:
        est = TypicalityEstimator(draws=n, batch_size=32, seed=0)
        t0 = time.perf_counter()
        maps = torch.cat([est.maps(model, x0[s : s + 64], cond[s : s + 64]) for s in range(0, len(x0), 64)]).numpy()
        report(f"plain N={n}", maps, 2 * n * len(maps), time.perf_counter() - t0)
    est = TypicalityEstimator(draws=args.draws, batch_size=32, seed=0)
    specs = args.adaptive if args.adaptive is not None else [f"elimination:{z}" for z in args.z]
    for spec in specs:
        kind, z, *more = spec.split(":")
        decide = int(more[0]) if more else 1
        k = int(more[1]) if len(more) > 1 else args.top_k
        variance = more[2] if len(more) > 2 else "own"
        rule = AdaptiveRule(
            first=args.first,
            z=float(z),
            top_k=k,
            per_image=args.per_image,
            patch=args.patch,
            kind=kind,
            decide=decide,
            variance=variance,
        )
        t0 = time.perf_counter()
        res = adaptive_maps(est, model, [(np.arange(len(x0)), lambda pos: x0[torch.from_numpy(pos)])], cond, rule)
        name = f"{kind} z={z} K={k}" + (f" dec={decide}" if kind == "decision" else "")
        name += " moderated" if variance == "moderated" else ""
        report(name, np.stack(res.maps), 2 * int(res.draws.sum()), time.perf_counter() - t0)
        counts = {int(a): int(b) for a, b in zip(*np.unique(res.draws, return_counts=True))}
        print(f"{'':<34}draws per image: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
