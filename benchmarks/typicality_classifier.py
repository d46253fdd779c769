"""Typicality as a classifier on scikit-learn's handwritten digits, at the default settings.

Splits the 1797 digits (32x32, white ink on black) into a stratified training set and a held-out
set (20%, seeded), trains the default pixel model on the training images only (defaults of
ModelConfig / TrainConfig, `TrainConfig.budget(n_train)` steps), scores every held-out image
under every digit with `TypicalityEstimator.cotypicality_maps` (ScoreConfig defaults: the same
(t, eps) draws for all ten labels, one batched forward of 11 inputs a draw), predicts the label
of highest typicality, and prints the accuracy, the confusion matrix, the most confused pairs and
the label x label cotypicality matrix, with timings.

    .venv/bin/python benchmarks/typicality_classifier.py                 # all 1797 digits
    .venv/bin/python benchmarks/typicality_classifier.py --per-label 60  # a quicker run
Target (issue): held-out accuracy >= 0.90.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import torch

from gcmodels.config import Settings
from gcmodels.data.synthetic import digits_dataset
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion
from gcmodels.mining.cotypicality import (
    classification_accuracy,
    confused_labels,
    confusion_matrix,
    label_matrix,
    predict_labels,
    stratified_split,
)
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import configure_torch


def log_step(row: dict, steps: int) -> None:
    if (row["step"] + 1) % 100 == 0 or row["step"] + 1 == steps:
        print(
            f"  step {row['step'] + 1}/{steps}  loss {row['loss']:.4f}  {row['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=None, help="digits per label (default: all 1797)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the split")
    ap.add_argument(
        "--steps", type=int, default=None, help="override the training budget (default: TrainConfig.budget)"
    )
    ap.add_argument("--draws", type=int, default=None, help="override score.draws")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    configure_torch(args.threads)
    s = Settings()
    res = s.data.resolution

    data = digits_dataset(n_per_label=args.per_label, size=res, seed=args.seed)
    labels = np.array([d.label for d in data], dtype=object)
    pixels = torch.from_numpy(np.stack([np.asarray(d.image) for d in data]).transpose(0, 3, 1, 2).copy())
    train_idx, test_idx = stratified_split(labels, args.test_fraction, seed=args.seed)
    vocab = sorted(set(labels.tolist()))

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
    steps = args.steps or s.train.budget(len(train_idx))
    t0 = time.perf_counter()
    result = train_diffusion(
        model,
        pixels[train_idx],
        model.label_index(list(labels[train_idx])),
        steps=steps,
        **s.train.trainer_settings(),
        generator=gen,
        callback=lambda row: log_step(row, steps),
    )
    train_s = time.perf_counter() - t0

    sc = s.score
    est = TypicalityEstimator(
        draws=args.draws or sc.draws, t_min=sc.t_min, t_max=sc.t_max, batch_size=sc.batch_size, seed=sc.seed
    )
    label_ids = model.label_index(vocab)
    t0 = time.perf_counter()
    scores = []
    for start in range(0, len(test_idx), 64):
        x0 = model.encode(pixels[test_idx[start : start + 64]])
        scores.append(est.cotypicality_maps(model, x0, label_ids).mean((-2, -1)).numpy())
        print(
            f"  scored {start + x0.shape[0]}/{len(test_idx)}  {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    scores = np.concatenate(scores)  # (B_test, L)
    score_s = time.perf_counter() - t0

    true = labels[test_idx]
    pred = predict_labels(scores, vocab)
    acc = classification_accuracy(true, pred)
    cm = confusion_matrix(true, pred, vocab)
    pd.set_option("display.width", 160)
    print(
        f"\ntypicality classifier on sklearn digits: {len(train_idx)} training / {len(test_idx)} held-out images "
        f"({res}x{res}), {len(vocab)} labels"
    )
    print(
        f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {result.steps} steps of batch "
        f"{s.train.batch_size} (final loss {np.mean([r['loss'] for r in result.history[-50:]]):.4f}); "
        f"{est.draws} draws x {len(vocab) + 1} UNet inputs per image; {torch.get_num_threads()} threads"
    )
    print(f"\n{'metric':<36}{'value':>10}{'target':>10}")
    print(f"{'held-out accuracy':<36}{acc:>10.3f}{'>= 0.90':>10}")
    print(f"{'chance':<36}{1 / len(vocab):>10.3f}")
    print(f"{'training seconds':<36}{train_s:>10.1f}")
    print(f"{'cotypicality seconds':<36}{score_s:>10.1f}")
    print(f"{'cotypicality images / s':<36}{len(test_idx) / score_s:>10.2f}")
    print("\nconfusion matrix (rows: true digit, columns: prediction)")
    print(cm.to_string())
    print("\nmost confused pairs")
    print(confused_labels(cm, top=8).to_string(index=False))
    print("\nmean typicality of held-out images of label a (rows) under label b (columns)")
    print(label_matrix(scores, true, vocab).round(4).to_string())
    print("RESULT:", "target met" if acc >= 0.9 else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
