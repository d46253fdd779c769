"""Typicality scoring speed against the bare batched UNet forward passes it needs, and against
the reference method's way of scoring.

For N draws, scoring M images needs 2*N*M UNet evaluations (conditional + null branch per draw).
This times `TypicalityEstimator.maps` end to end and, separately, exactly the same sequence of
forward calls (same batch sizes) on ready-made inputs, and prints the ratio
bare-forward time / scoring time (target: >= 0.9, i.e. the estimator adds < 10%).

Alongside, on the same model and images and at the same N, the reference approach of the
paper's code: per image, forwards of 10 draws x 2 conditions (20 inputs), the full per-draw loss
tensor (N, 2, C, H, W) kept and written as a float16 `.npy` file per image, and the maps
reduced from those files afterwards. Printed: the ratio of the two end-to-end times and the bytes
stored per image by each (gcmine: the map in the zstd Parquet `maps` artifact, as the score
task writes it, with `MAPS_PARQUET`; target: >= 100x less). `--storage-only` skips the timing
and the reference's forwards: it scores the images once per N and prints the storage columns
(the reference's bytes are those of its float16 `.npy` of that shape), plus the bytes of the
other encodings that were considered for the maps.

Times are process CPU time with one torch thread (other jobs on a shared machine stay out of
the ratios); the reference's file writes land in the page cache of a temporary folder, so its
time is a lower bound of what it costs on a real disk or object store.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring_speed.py [--model RUN/model] [--images 64] [--draws 4 8 16 32]
        [--storage-only]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gcmine.tasks.infra.artifacts import MAPS_PARQUET, maps_frame
from gcmodels.config import ModelConfig, ScoreConfig
from gcmodels.diffusion import PixelDiffusion
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import configure_torch

REF_DRAWS_PER_FORWARD = 10  # the paper's code: 10 draws x 2 conditions per UNet call


def reference_scoring(
    model: PixelDiffusion, x0: torch.Tensor, cond: torch.Tensor, n: int, folder: Path
) -> tuple[torch.Tensor, int]:
    """The reference method: per image and per 10 draws one forward of the draws x (null, label),
    the (N, 2, C, H, W) loss tensor written as float16 .npy, then reduced from the files.
    Returns the maps (M, H, W) and the bytes written."""
    m = x0.shape[0]
    written = 0
    with torch.inference_mode():
        for i in range(m):
            g = torch.Generator().manual_seed(i)  # the reference re-seeds per image
            losses = []
            for s in range(0, n, REF_DRAWS_PER_FORWARD):
                d = min(REF_DRAWS_PER_FORWARD, n - s)
                t = (torch.rand(d, generator=g) * 0.6 + 0.1).mul(model.num_train_timesteps).long()
                eps = torch.randn((d, *x0.shape[1:]), generator=g)
                x_t = model.add_noise(x0[i].expand(d, -1, -1, -1), eps, t)
                c = torch.cat([torch.zeros(d, dtype=torch.long), cond[i].expand(d)])
                pred = model.predict_noise(x_t.repeat(2, 1, 1, 1), t.repeat(2), c)
                losses.append((pred - eps.repeat(2, 1, 1, 1)).pow(2).view(2, d, *x0.shape[1:]).transpose(0, 1))
            path = folder / f"{i:06d}.npy"
            np.save(path, torch.cat(losses).numpy().astype(np.float16))  # (N, 2, C, H, W)
            written += path.stat().st_size
    maps = []
    for i in range(m):
        dm = torch.from_numpy(np.load(folder / f"{i:06d}.npy")).float().mean(2)  # (N, 2, H, W)
        maps.append((dm[:, 0] - dm[:, 1]).mean(0))
    return torch.stack(maps), written


def parquet_bytes(frame, **options) -> int:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd", **options)
    return len(buf.getvalue())


def stored_bytes(maps: torch.Tensor) -> int:
    """Bytes of the maps as the score task stores them (zstd Parquet of `maps_frame` written with
    `MAPS_PARQUET`)."""
    m = maps.shape[0]
    return parquet_bytes(maps_frame([f"{i:064x}" for i in range(m)], ["a"] * m, maps.numpy()), **MAPS_PARQUET)


def encodings(maps: torch.Tensor) -> dict[str, int]:
    """Bytes per image of the encodings considered for the maps table (all zstd Parquet)."""
    m = maps.shape[0]
    f32 = maps_frame([f"{i:064x}" for i in range(m)], ["a"] * m, maps.numpy())
    f16 = f32.assign(map=[v.astype(np.float16) for v in f32["map"]])
    raw = f32.assign(map=[np.ascontiguousarray(v, dtype="<f4").tobytes() for v in f32["map"]])
    plain = {"use_dictionary": MAPS_PARQUET["use_dictionary"]}
    out = {
        "float32, pyarrow defaults (dictionary)": parquet_bytes(f32),
        "float32, no dictionary": parquet_bytes(f32, **plain),
        "float32, no dictionary, byte-stream-split (chosen)": parquet_bytes(f32, **MAPS_PARQUET),
        "float32 as bytes in a binary column": parquet_bytes(raw, **plain),
        "float16, pyarrow defaults (dictionary)": parquet_bytes(f16),
        "float16, no dictionary, byte-stream-split": parquet_bytes(f16, **MAPS_PARQUET),
    }
    return {k: v // m for k, v in out.items()}


def reference_bytes(n: int, shape: tuple[int, ...]) -> int:
    """Bytes of the reference's per-image float16 .npy of the (N, 2, C, H, W) loss tensor."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((n, 2, *shape), np.float16))
    return len(buf.getvalue())


def bare_forwards(model: PixelDiffusion, n_inputs: int, batch: int, shape: tuple[int, ...]) -> float:
    x = torch.randn((batch, *shape))
    t = torch.randint(0, model.num_train_timesteps, (batch,))
    c = torch.randint(0, len(model.labels) + 1, (batch,))
    start = time.process_time()
    with torch.inference_mode():
        for s in range(0, n_inputs, batch):
            b = min(batch, n_inputs - s)
            model.predict_noise(x[:b], t[:b], c[:b])
    return time.process_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a gcmine model folder (default: a fresh default-size model)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--draws", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--batch-size", type=int, default=ScoreConfig().batch_size)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--storage-only", action="store_true", help="only the storage columns (no timing, no reference forwards)"
    )
    args = ap.parse_args()
    if args.model:
        model = PixelDiffusion.load(args.model).eval()
    else:
        mc = ModelConfig()
        model = PixelDiffusion.create(
            ["a", "b", "c", "d"],
            resolution=args.resolution,
            block_out_channels=mc.block_out_channels,
            layers_per_block=mc.layers_per_block,
            num_train_timesteps=mc.num_train_timesteps,
            beta_schedule=mc.beta_schedule,
            generator=torch.Generator().manual_seed(0),
        ).eval()
    configure_torch(args.threads)
    res = model.resolution
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, res, res), dtype=torch.uint8, generator=g)
    cond = torch.randint(1, len(model.labels) + 1, (args.images,), generator=g)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {res}x{res}, "
        f"{args.images} images, batch {args.batch_size} UNet inputs, {torch.get_num_threads()} threads"
    )
    x0 = model.encode(images)
    if args.storage_only:
        print(f"{'N':>4}{'bytes/img':>11}{'ref bytes/img':>15}{'less':>8}  (maps {res}x{res}, |value| median / max)")
        for n in args.draws:
            maps = TypicalityEstimator(draws=n, batch_size=args.batch_size).maps(model, x0, cond)
            ours, ref = stored_bytes(maps) / args.images, reference_bytes(n, tuple(x0.shape[1:]))
            a = maps.abs()
            print(f"{n:>4}{ours:>11.0f}{ref:>15}{ref / ours:>7.0f}x  ({a.median():.1e} / {a.max():.1e})")
            for name, b in encodings(maps).items():
                print(f"      {name:<52}{b:>8} bytes/img")
        return 0
    bare_forwards(model, args.batch_size * 2, args.batch_size, (3, res, res))  # warm-up
    print(
        f"{'N':>4}{'images/s':>10}{'fwd/s':>10}{'bare fwd/s':>12}{'ratio':>8}"
        f"{'ref images/s':>14}{'speed-up':>10}{'bytes/img':>11}{'ref bytes/img':>15}{'less':>8}"
    )
    for n in args.draws:
        est = TypicalityEstimator(draws=n, batch_size=args.batch_size)
        start = time.process_time()
        maps = est.maps(model, x0, cond)
        scoring = time.process_time() - start
        n_inputs = 2 * n * args.images
        bare = bare_forwards(model, n_inputs, args.batch_size, (3, res, res))
        ours_bytes = stored_bytes(maps) / args.images
        with tempfile.TemporaryDirectory(prefix="gcmine-ref-") as tmp:
            start = time.process_time()
            _, written = reference_scoring(model, x0, cond, n, Path(tmp))
            ref = time.process_time() - start
        ref_bytes = written / args.images
        print(
            f"{n:>4}{args.images / scoring:>10.2f}{n_inputs / scoring:>10.1f}{n_inputs / bare:>12.1f}{bare / scoring:>8.3f}"
            f"{args.images / ref:>14.2f}{ref / scoring:>9.2f}x{ours_bytes:>11.0f}{ref_bytes:>15.0f}{ref_bytes / ours_bytes:>7.0f}x"
        )
    paper = 100 * 2 * 4 * 32 * 32 * 2 + 128
    print(
        f"(the paper's setting, 100 draws of a 4 x 32 x 32 latent per 256 x 256 image, stores {paper} bytes per "
        f"image as float16 .npy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
