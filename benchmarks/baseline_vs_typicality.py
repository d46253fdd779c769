"""Typicality mining against the classic baseline (Doersch et al. 2012) on the ground-truth set.

Builds the motif dataset (photographic backgrounds shared by all labels, one label-specific motif
per image, one distractor in every label; ground-truth motif boxes), then runs both miners on it
and prints how often each one's top patch of an image contains the motif centre, with wall times:

* typicality (gcmodels, no Prefect): images at the default working resolution, the default pixel
  model trained at the default budget, typicality maps under the image's own label (ScoreConfig
  defaults), the most typical patch of each image (Settings().patch_size), boxes mapped back to
  the original pixels (as the rank stage does);
* baseline: `DiscriminativeMiner` on the original images (HOG + colour, k-NN seeding, 3 rounds of
  cross-validated linear SVMs with hard negatives); the top patch of an image is the
  best-scoring patch of its label's best detector.

It also translates a few images of each label to the next label with the trained model
(`Translator` defaults) and prints the pixel change inside vs outside the motif box, against the
same images "translated" to their own label, and the consistent changes found.

    .venv/bin/python benchmarks/baseline_vs_typicality.py                  # 4 labels x 100, 64x64
    .venv/bin/python benchmarks/baseline_vs_typicality.py --per-label 50
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from gcmodels.baselines.doersch import DiscriminativeMiner
from gcmodels.config import Settings
from gcmodels.data.images import to_working
from gcmodels.data.synthetic import motif_dataset
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion
from gcmodels.mining.patches import scale_boxes, top_patches
from gcmodels.mining.translation import Translator, change_maps, consistent_changes
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import configure_torch


def contains_centre(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """boxes, truth (N, 4) -> (N,) bool: the box contains the centre of the truth box."""
    cx, cy = (truth[:, 0] + truth[:, 2]) / 2.0, (truth[:, 1] + truth[:, 3]) / 2.0
    return (boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])


def chance(side: float, size: int) -> float:
    """Probability that a uniformly placed side x side box contains a given interior point (about)."""
    return min(1.0, side**2 / (size - side + 1) ** 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=100)
    ap.add_argument("--size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--translate", type=int, default=10, help="images per label to translate (0 = skip)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument(
        "--steps", type=int, default=None, help="override the training budget (default: TrainConfig.budget)"
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    configure_torch(args.threads)
    s = Settings()
    res, patch = s.data.resolution, s.patch_size

    data = motif_dataset(n_per_label=args.per_label, size=args.size, seed=args.seed)
    labels = np.array([d.label for d in data], dtype=object)
    truth = np.array([d.box for d in data])
    original = np.stack([np.asarray(d.image) for d in data])  # (N, S, S, 3)
    vocab = sorted(set(labels.tolist()))

    # ---------------------------------------------------------------- typicality
    t_all = time.perf_counter()
    working = np.stack([np.asarray(to_working(d.image, res)) for d in data])
    pixels = torch.from_numpy(working.transpose(0, 3, 1, 2).copy())
    gen = torch.Generator().manual_seed(s.train.seed)
    model = PixelDiffusion.create(
        vocab,
        resolution=res,
        block_out_channels=s.model.block_out_channels,
        layers_per_block=s.model.layers_per_block,
        num_train_timesteps=s.model.num_train_timesteps,
        beta_schedule=s.model.beta_schedule,
        generator=gen,
    )
    cond = model.label_index(list(labels))
    t0 = time.perf_counter()
    train_diffusion(
        model,
        pixels,
        cond,
        steps=args.steps or s.train.budget(len(data)),
        **s.train.trainer_settings(),
        generator=gen,
    )
    train_s = time.perf_counter() - t0
    sc = s.score
    est = TypicalityEstimator(draws=sc.draws, t_min=sc.t_min, t_max=sc.t_max, batch_size=sc.batch_size, seed=sc.seed)
    t0 = time.perf_counter()
    maps = torch.cat(
        [est.maps(model, model.encode(pixels[i : i + 64]), cond[i : i + 64]) for i in range(0, len(data), 64)]
    )
    boxes, _ = top_patches(maps, patch, 1)
    typ_boxes = scale_boxes(boxes[:, 0].numpy(), (res, res), (args.size, args.size))
    score_s = time.perf_counter() - t0
    typ_s = time.perf_counter() - t_all
    typ_hit = contains_centre(typ_boxes, truth)

    # ---------------------------------------------------------------- baseline
    miner = DiscriminativeMiner(cell_size=4, patch_cells=max(2, round(patch * args.size / res / 4)), seed=args.seed)
    found = miner.mine(original, labels)
    best = found.best_per_image(detectors=1).sort_values("image")
    base_boxes = best[["x0", "y0", "x1", "y1"]].to_numpy()
    base_hit = contains_centre(base_boxes, truth[best["image"].to_numpy()])
    top = found.top_detections(50)
    top = top[top["detector"] == 0]
    top_ok = (top["image_label"] == top["label"]).to_numpy() & contains_centre(
        top[["x0", "y0", "x1", "y1"]].to_numpy(), truth[top["image"].to_numpy()]
    )

    side_typ = patch * args.size / res
    print(
        f"\nbaseline vs typicality: {len(data)} images of {args.size}x{args.size}, {len(vocab)} labels "
        f"(typicality at {res}x{res}, patch {patch} px = {side_typ:.0f} original px; baseline patch "
        f"{miner.patch_size} px); {torch.get_num_threads()} threads"
    )
    print(f"{'miner':<12}{'top patch has motif centre':>28}{'chance':>9}{'seconds':>10}")
    print(
        f"{'typicality':<12}{typ_hit.mean():>28.3f}{chance(side_typ, args.size):>9.3f}{typ_s:>10.1f}"
        f"   (train {train_s:.1f} s, score + patches {score_s:.1f} s)"
    )
    print(
        f"{'baseline':<12}{base_hit.mean():>28.3f}{chance(miner.patch_size, args.size):>9.3f}"
        f"{found.seconds['total']:>10.1f}   ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in found.seconds.items() if k != "total")
        + ")"
    )
    print("\nper label: share of images whose top patch contains the motif centre")
    for lab in vocab:
        sel = labels == lab
        print(
            f"  {lab:<10} typicality {typ_hit[sel].mean():.3f}   baseline {base_hit[labels[best['image'].to_numpy()] == lab].mean():.3f}"
        )
    print(
        "\nbaseline: best detector per label, its held-out purity, and its top-50 detections that are on an "
        "image of the label and contain the motif centre"
    )
    d0 = found.detectors[found.detectors["detector"] == 0].set_index("label")["purity"]
    for lab in vocab:
        sel = (top["label"] == lab).to_numpy()
        print(f"  {lab:<10} purity {d0[lab]:.2f}   top-50 on motif {top_ok[sel].mean():.2f}")

    # ---------------------------------------------------------------- translation
    if args.translate > 0:
        pick = np.concatenate([np.flatnonzero(labels == lab)[: args.translate] for lab in vocab])
        x0 = model.encode(pixels[pick])
        own = cond[pick]
        target = own % len(vocab) + 1
        box = scale_boxes(truth[pick], (args.size, args.size), (res, res))
        inside = torch.zeros(len(pick), res, res, dtype=torch.bool)
        for i, (bx0, by0, bx1, by1) in enumerate(box):
            inside[i, by0:by1, bx0:bx1] = True

        def in_out(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            m = change_maps(x0, out)
            return ((m * inside).sum((1, 2)) / inside.sum((1, 2))).numpy(), (
                (m * ~inside).sum((1, 2)) / (~inside).sum((1, 2))
            ).numpy()

        t_orig = est.maps(model, x0, own).mean((1, 2)).numpy()
        print(
            f"\ntranslation of {len(pick)} images ({args.translate} per label) to the next label; "
            f"typicality of the originals under their own label {t_orig.mean():.4f}"
        )
        print(
            f"{'strength':>8}{'guid.':>6}{'steps':>6}{'sec':>6}{'in':>7}{'out':>7}{'in>out':>8}{'ratio':>7}"
            f"{'own-in':>8}{'in>own-in':>10}{'T(tgt)':>9}{'T(src)':>9}{'chg@motif':>10}"
        )
        for strength in args.strengths:
            for guidance in args.guidance:
                tr = Translator(strength=strength, guidance=guidance, seed=args.seed)
                t0 = time.perf_counter()
                moved = tr.translate(model, x0, target)
                trans_s = time.perf_counter() - t0
                same = tr.translate(model, x0, own)
                inn, out = in_out(moved)
                same_in, _ = in_out(same)
                t_moved = est.maps(model, moved, target).mean((1, 2)).numpy()
                t_src = est.maps(model, moved, own).mean((1, 2)).numpy()
                changes = consistent_changes(x0, moved, patch_size=patch, per_image=1, clusters=4, seed=args.seed)
                mc = scale_boxes(
                    changes.patches[["x0", "y0", "x1", "y1"]].to_numpy(), (res, res), (args.size, args.size)
                )
                hit = contains_centre(mc, truth[pick[changes.patches["image"].to_numpy()]])
                print(
                    f"{strength:>8.2f}{guidance:>6.1f}{len(tr.timesteps(model.num_train_timesteps)):>6d}{trans_s:>6.1f}"
                    f"{inn.mean():>7.3f}{out.mean():>7.3f}{np.mean(inn > out):>8.2f}{np.median(inn / out):>7.2f}"
                    f"{same_in.mean():>8.3f}{np.mean(inn > same_in):>10.2f}{t_moved.mean():>9.4f}{t_src.mean():>9.4f}"
                    f"{hit.mean():>10.2f}"
                )
        print(
            "  in/out: mean |change| (model space) inside/outside the motif box; own-in: inside change when translating"
            " to the image's own label (control); T(tgt)/T(src): typicality of the translations under the target /"
            " source label; chg@motif: the most changed patch contains the motif centre"
        )
    print(f"\ntotal wall time {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
