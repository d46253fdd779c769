"""Typicality scoring speed against the bare batched UNet forward passes it needs.

For N draws, scoring M images needs 2*N*M UNet evaluations (conditional + null branch per draw).
This times `TypicalityEstimator.maps` end to end and, separately, exactly the same sequence of
forward calls (same batch sizes) on ready-made inputs, and prints the ratio
bare-forward time / scoring time (target: >= 0.9, i.e. the estimator adds < 10%).

    .venv/bin/python benchmarks/scoring_speed.py [--model RUN/model] [--images 64] [--draws 4 8 16 32]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gcmodels.config import ModelConfig, ScoreConfig
from gcmodels.diffusion import PixelDiffusion
from gcmodels.runtime import configure_torch
from gcmodels.typicality import TypicalityEstimator


def bare_forwards(model: PixelDiffusion, n_inputs: int, batch: int, shape: tuple[int, ...]) -> float:
    x = torch.randn((batch, *shape))
    t = torch.randint(0, model.num_train_timesteps, (batch,))
    c = torch.randint(0, len(model.labels) + 1, (batch,))
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, n_inputs, batch):
            b = min(batch, n_inputs - s)
            model.predict_noise(x[:b], t[:b], c[:b])
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a gcmine model folder (default: a fresh default-size model)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--draws", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--batch-size", type=int, default=ScoreConfig().batch_size)
    args = ap.parse_args()
    configure_torch(None)
    if args.model:
        model = PixelDiffusion.load(args.model).eval()
    else:
        mc = ModelConfig()
        model = PixelDiffusion.create(
            ["a", "b", "c", "d"], resolution=args.resolution, block_out_channels=mc.block_out_channels,
            layers_per_block=mc.layers_per_block, num_train_timesteps=mc.num_train_timesteps,
            beta_schedule=mc.beta_schedule, generator=torch.Generator().manual_seed(0),
        ).eval()
    res = model.resolution
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, res, res), dtype=torch.uint8, generator=g)
    cond = torch.randint(1, len(model.labels) + 1, (args.images,), generator=g)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {res}x{res}, "
          f"{args.images} images, batch {args.batch_size} UNet inputs, {torch.get_num_threads()} threads")
    bare_forwards(model, args.batch_size * 2, args.batch_size, (3, res, res))  # warm-up
    print(f"{'N':>4}{'images/s':>10}{'fwd/s':>10}{'bare fwd/s':>12}{'ratio':>8}")
    for n in args.draws:
        est = TypicalityEstimator(draws=n, batch_size=args.batch_size)
        start = time.perf_counter()
        est.maps(model, model.encode(images), cond)
        scoring = time.perf_counter() - start
        n_inputs = 2 * n * args.images
        bare = bare_forwards(model, n_inputs, args.batch_size, (3, res, res))
        print(f"{n:>4}{args.images / scoring:>10.2f}{n_inputs / scoring:>10.1f}{n_inputs / bare:>12.1f}{bare / scoring:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
