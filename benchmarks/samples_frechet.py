"""Samples and their Frechet distance over training, on scikit-learn's digits (issue 18).

Trains the pixel model on the 1797 digits (16x16 by default, labels "0".."9", the training
defaults of TrainConfig) and, at a few checkpoints of that one training (the untrained model
first), draws --per-label seeded DDIM samples of every digit (--sample-steps steps, the sampler of
the samples stage) and measures, on the pixel-PCA features of the embed stage's default encoder
fitted on the real digits:

- the Frechet distance between all samples and all real digits, and its mean over the digits
  (each digit's samples against that digit's images): it should fall as the model learns;
- the share of samples whose nearest real digit is the digit they were generated for (chance 10%).

The floor: the same measures for --per-label real digits per label drawn from the collection in
place of samples (the distance a perfect model would get with this many samples).

    .venv/bin/python benchmarks/samples_frechet.py [--steps 800] [--checkpoints 0 50 100 200 400 800]
        [--per-label 20] [--sample-steps 25] [--resolution 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from gcmodels.config import EmbedConfig, ModelConfig, TrainConfig
from gcmodels.data.synthetic import digits_dataset
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.sampling import Sampler
from gcmodels.diffusion.training import train_diffusion
from gcmodels.embedding.encoders import make_encoder
from gcmodels.mining.frechet import ALL, sample_quality
from gcmodels.mining.translation import to_uint8
from gcmodels.runtime import configure_torch


def _measure(encoder, real_f: np.ndarray, real_labels: np.ndarray, images: np.ndarray, labels: np.ndarray) -> dict:
    feats = np.asarray(encoder.transform(images), np.float64)
    q, _, _ = sample_quality(labels, feats, real_labels, real_f)
    per_label = q[q["label"] != ALL]
    overall = q[q["label"] == ALL].iloc[0]
    return {
        "fd_all": float(overall["frechet"]),
        "fd_label_mean": float(per_label["frechet"].mean()),
        "nearest": float(overall["nearest_label_share"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800, help="training steps")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 50, 100, 200, 400, 800])
    ap.add_argument("--per-label", type=int, default=20, help="samples per digit at each checkpoint")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of each sample")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="UNet channels per level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--grid", default=None, help="write the last checkpoint's samples as a PNG grid (a row per digit) here"
    )
    args = ap.parse_args()
    configure_torch(args.threads)

    items = digits_dataset(size=args.resolution)
    real = np.stack([np.asarray(it.image.convert("RGB")) for it in items])  # (N, H, W, 3) uint8
    real_labels = np.array([it.label for it in items], dtype=object)
    names = [str(i) for i in range(10)]
    encoder = make_encoder(EmbedConfig()).fit(real)  # the embed stage's default: pixel PCA
    real_f = np.asarray(encoder.transform(real), np.float64)
    sample_labels = np.repeat(np.array(names, dtype=object), args.per_label)
    print(
        f"{len(real)} digits at {args.resolution}x{args.resolution}; features: {encoder.describe()}; "
        f"{args.per_label} samples per digit, {args.sample_steps} DDIM steps; threads {args.threads}"
    )

    rng = np.random.default_rng(args.seed)
    floor_idx = np.concatenate(
        [rng.choice(np.flatnonzero(real_labels == n), args.per_label, replace=False) for n in names]
    )
    floor = _measure(encoder, real_f, real_labels, real[floor_idx], real_labels[floor_idx])

    mc, tc = ModelConfig(), TrainConfig()
    model = PixelDiffusion.create(
        names,
        resolution=args.resolution,
        block_out_channels=tuple(args.channels),
        layers_per_block=mc.layers_per_block,
        num_train_timesteps=mc.num_train_timesteps,
        beta_schedule=mc.beta_schedule,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sampler = Sampler(steps=args.sample_steps, seed=args.seed)
    cond_labels = model.label_index(names)
    x = torch.from_numpy(real).permute(0, 3, 1, 2).contiguous()
    cond = model.label_index(list(real_labels))
    rows: list[dict] = []
    last_loss: list[float] = []
    clock = {"train": 0.0}

    def measure(step: int) -> None:
        start = time.perf_counter()
        with torch.inference_mode():
            out = sampler.sample(model, cond_labels, args.per_label, (3, args.resolution, args.resolution))
        images = to_uint8(out).permute(0, 2, 3, 1).numpy()
        sample_s = time.perf_counter() - start
        if args.grid:  # rows: digits, columns: samples (overwritten at each checkpoint: the last one stays)
            from PIL import Image

            n, h = args.per_label, args.resolution
            grid = images.reshape(10, n, h, h, 3).transpose(0, 2, 1, 3, 4).reshape(10 * h, n * h, 3)
            Image.fromarray(np.ascontiguousarray(grid)).resize((n * h * 4, 10 * h * 4), Image.NEAREST).save(args.grid)
        m = _measure(encoder, real_f, real_labels, images, sample_labels)
        rows.append(
            {
                "step": step,
                "loss": float(np.mean(last_loss[-50:])) if last_loss else float("nan"),
                "train_s": clock["train"],
                "sample_s": sample_s,
                **m,
            }
        )
        r = rows[-1]
        print(
            f"step {step:>5}  loss {r['loss']:.4f}  FD all {r['fd_all']:9.2f}  FD per digit {r['fd_label_mean']:9.2f}  "
            f"nearest digit {100 * r['nearest']:5.1f}%  ({sample_s:.1f} s sampling, {clock['train']:.0f} s training)",
            flush=True,
        )

    wanted = sorted(set(args.checkpoints))
    if 0 in wanted:
        measure(0)
    train_start = time.perf_counter()
    paused = [0.0]

    def callback(row: dict) -> None:
        last_loss.append(row["loss"])
        done = row["step"] + 1
        if done in wanted and done < args.steps:
            clock["train"] = time.perf_counter() - train_start - paused[0]
            t0 = time.perf_counter()
            model.eval()
            measure(done)
            model.train()
            paused[0] += time.perf_counter() - t0

    train_diffusion(
        model,
        x,
        cond,
        steps=args.steps,
        **tc.trainer_settings(),
        generator=torch.Generator().manual_seed(args.seed),
        callback=callback,
    )
    clock["train"] = time.perf_counter() - train_start - paused[0]
    model.eval()
    measure(args.steps)

    print(
        "\n| training step | loss (last 50) | Frechet distance, all samples | mean over digits | nearest real digit is the sample's digit |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        loss = "—" if np.isnan(r["loss"]) else f"{r['loss']:.4f}"
        print(f"| {r['step']} | {loss} | {r['fd_all']:.2f} | {r['fd_label_mean']:.2f} | {100 * r['nearest']:.1f}% |")
    print(
        f"| real digits ({args.per_label} per digit, the floor) | — | {floor['fd_all']:.2f} | {floor['fd_label_mean']:.2f} | "
        f"{100 * floor['nearest']:.1f}% |"
    )
    falling = rows[-1]["fd_all"] < rows[0]["fd_all"]
    print(
        f"\nFD fell from {rows[0]['fd_all']:.2f} (step {rows[0]['step']}) to {rows[-1]['fd_all']:.2f} (step {rows[-1]['step']}): "
        f"{'yes' if falling else 'NO'}; training {clock['train']:.0f} s, sampling {sum(r['sample_s'] for r in rows):.0f} s"
    )
    return 0 if falling else 1


if __name__ == "__main__":
    sys.exit(main())
