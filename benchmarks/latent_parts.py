"""A shallow latent diffusion model on the parts set, beside the pixel model (issue 21).

The issue's third way to keep small parts on the CPU: learn a small autoencoder on the
collection, and run the diffusion model (and the typicality maps) in its latent space, so that
the denoiser works on a grid as small as the default 32 px one while each latent cell carries the
detail of `--ae-res` / 32 pixels of the image (in the product: `model.latent_factor`, whose
flow `parts.py --set model.latent_factor=2 --set data.resolution=64` measures with its elements).
This script compares the maps of both models without a flow, the model code directly, both
trained and scored the same way in one process, one after the other (same data, same seeds, the
product's default fine-tuning and scoring settings):

- **pixel**: the default pixel model (`PixelDiffusion.create`, the default network) on 32 px working
  images: what `gcmine run` does at the defaults;
- **latent**: the collection autoencoder (`CollectionAutoencoder`, `--factor` 2: `--ae-res` 64 px ->
  32 x 32 x `--channels`) trained on crops of the collection's working images by mean squared
  error (`train_collection_autoencoder`: `--ae-steps`, `--ae-lr`, `--ae-crop`, `--width`), its latents
  standardised per channel; the same UNet (same levels and widths, `--channels` in and out)
  trained on the latents (`PixelDiffusion.create(latent_factor=...)`).

Both are scored by label contrast (cycled rivals, `score.draws` 16: the flow's default maps) on
their own grid (32 x 32 each); the rank-0 patch (0.2 x the grid's side, as `rank.patch_size`) is
mapped back to the original pixels and checked against the parts' boxes as `parts.py` does:
rank-0 on an own part, and the mean contrast over each kind's own-style and plain-style boxes.
No elements: the pointing is what the maps decide (RESULTS 12e-12g: the element stage follows it).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/latent_parts.py                 # car, seed 0
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/latent_parts.py --layout house --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parts import evaluate, make_items, truth_frame

from gcmodels.config import Settings
from gcmodels.data.images import to_working
from gcmodels.data.parts import PARTS_LAYOUTS
from gcmodels.diffusion import CollectionAutoencoder, PixelDiffusion, train_collection_autoencoder, train_diffusion
from gcmodels.mining.patches import scale_boxes, top_patches
from gcmodels.mining.typicality import TypicalityEstimator


def fine_tune(model: PixelDiffusion, x: Tensor, cond: Tensor, settings: Settings, steps: int) -> float:
    tc = settings.train
    res = train_diffusion(
        model,
        x,
        cond,
        steps=steps,
        **tc.trainer_settings(),
        generator=torch.Generator().manual_seed(tc.seed),
    )
    return float(np.mean([r["loss"] for r in res.history[-100:]]))


def contrast_maps(model: PixelDiffusion, x0: Tensor, cond: Tensor, settings: Settings) -> Tensor:
    sc = settings.score
    est = TypicalityEstimator(draws=sc.draws, t_min=sc.t_min, t_max=sc.t_max, batch_size=sc.batch_size, seed=sc.seed)
    return torch.cat(
        [est.contrast_maps(model, x0[s : s + 64], cond[s : s + 64], len(model.labels)) for s in range(0, len(x0), 64)]
    )


def patches_frame(maps: Tensor, ids: list[str], labels: list[str], original: int, k: int = 5) -> pd.DataFrame:
    side = maps.shape[-1]
    size = max(1, round(0.2 * side))
    boxes, scores = top_patches(maps, size, k)
    boxes = scale_boxes(boxes.numpy(), (side, side), (original, original))
    rows = []
    for i, (iid, lab) in enumerate(zip(ids, labels)):
        for r in range(k):
            if boxes[i, r, 0] < 0:
                continue
            x0, y0, x1, y1 = (int(v) for v in boxes[i, r])
            rows.append(
                {
                    "image_id": iid,
                    "label": lab,
                    "rank": r,
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                    "typicality": float(scores[i, r]),
                    "element": -1,
                }
            )
    return pd.DataFrame(rows)


def box_means(maps: Tensor, truth: pd.DataFrame, ids: list[str], original: int, kinds: list[str]) -> dict:
    """Mean map value over each kind's boxes, own style / plain style (the map bilinearly upsampled)."""
    up = F.interpolate(maps[:, None], size=(original, original), mode="bilinear", align_corners=False)[:, 0].numpy()
    pos = {iid: i for i, iid in enumerate(ids)}
    out = {}
    for kind in [*kinds, "ring"]:
        rows = truth[truth["kind"] == kind]
        vals: dict[str, list[float]] = {"own": [], "plain": []}
        for r in rows.itertuples():
            key = "own" if r.owner == r.label else ("plain" if r.owner == "" else None)
            if key is None:
                continue
            vals[key].append(float(up[pos[r.image_id], int(r.gy0) : int(r.gy1), int(r.gx0) : int(r.gx1)].mean()))
        out[kind] = tuple(float(np.mean(v)) if v else float("nan") for v in (vals["own"], vals["plain"]))
    return out


def report(name: str, maps: Tensor, truth: pd.DataFrame, ids: list[str], labels: list[str], args, kinds, secs) -> None:
    patches = patches_frame(maps, ids, labels, args.size)
    empty = pd.DataFrame(columns=["label", "element", "rank"])
    rep = evaluate(patches, empty, truth, kinds, 4)
    per = ", ".join(f"{lab} {v['pointing']:.3f}" for lab, v in rep["per_label"].items())
    means = box_means(maps, truth, ids, args.size, kinds)
    mtxt = ", ".join(f"{k} {o * 1e3:+.2f}/{p * 1e3:+.2f}" for k, (o, p) in means.items())
    print(f"\n## {name}: rank-0 on an own part {rep['pointing']:.3f} ({per})")
    print(f"   mean contrast x1e3 over boxes, own / plain style: {mtxt}")
    print(f"   seconds: {secs}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=tuple(PARTS_LAYOUTS), default="car")
    ap.add_argument("--per-label", type=int, default=60)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--p-own", type=float, default=0.8)
    ap.add_argument("--p-cross", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000, help="diffusion fine-tuning steps (the default budget)")
    ap.add_argument("--ae-res", type=int, default=64, help="working resolution the autoencoder sees")
    ap.add_argument("--factor", type=int, default=2, help="autoencoder downsampling (latent side = ae-res / factor)")
    ap.add_argument("--channels", type=int, default=4, help="latent channels")
    ap.add_argument("--width", type=int, default=32, help="autoencoder convolution width")
    ap.add_argument("--ae-steps", type=int, default=1500)
    ap.add_argument("--ae-lr", type=float, default=1e-3, help="autoencoder peak learning rate (cosine to a tenth)")
    ap.add_argument(
        "--ae-crop", type=int, default=32, help="train the autoencoder on random crops of this side (0 = whole)"
    )
    ap.add_argument("--ae-seed", type=int, default=None, help="seed of the autoencoder (default: train.seed)")
    ap.add_argument("--skip-pixel", action="store_true", help="only the latent model")
    args = ap.parse_args()
    torch.manual_seed(0)
    settings = Settings()
    items = make_items(args)
    ids = [f"{i:05d}" for i in range(len(items))]
    truth = truth_frame(items, ids)
    kinds = [s.name for s in PARTS_LAYOUTS[args.layout].slots]
    labels = [it.label for it in items]
    vocab = sorted(set(labels))
    print(
        f"latent parts ({args.layout}, seed {args.seed}): {len(items)} images of {args.size} px; torch threads "
        f"{torch.get_num_threads()}; fine-tuning {args.steps} steps, batch {settings.train.batch_size}; "
        f"scoring contrast (cycled), {settings.score.draws} draws",
        flush=True,
    )

    def working(res: int) -> Tensor:
        arr = [np.asarray(to_working(it.image.convert("RGB"), res)) for it in items]
        return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()

    res = settings.data.resolution
    if not args.skip_pixel:
        g = torch.Generator().manual_seed(settings.train.seed)
        model = PixelDiffusion.create(
            vocab,
            resolution=res,
            block_out_channels=settings.model.block_out_channels,
            layers_per_block=settings.model.layers_per_block,
            num_train_timesteps=settings.model.num_train_timesteps,
            beta_schedule=settings.model.beta_schedule,
            generator=g,
        )
        cond = model.label_index(labels)
        imgs = working(res)
        t0 = time.perf_counter()
        loss = fine_tune(model, imgs, cond, settings, args.steps)
        t1 = time.perf_counter()
        with torch.inference_mode():
            maps = contrast_maps(model, model.encode(imgs), cond, settings)
        t2 = time.perf_counter()
        report(
            f"pixel {res} px",
            maps,
            truth,
            ids,
            labels,
            args,
            kinds,
            f"fine-tune {t1 - t0:.0f} (last-100 loss {loss:.4f}), score {t2 - t1:.0f}",
        )

    side = args.ae_res // args.factor
    imgs = working(args.ae_res)
    ae_seed = settings.train.seed if args.ae_seed is None else args.ae_seed
    model = PixelDiffusion.create(
        vocab,
        resolution=args.ae_res,
        block_out_channels=settings.model.block_out_channels,
        layers_per_block=settings.model.layers_per_block,
        num_train_timesteps=settings.model.num_train_timesteps,
        beta_schedule=settings.model.beta_schedule,
        generator=torch.Generator().manual_seed(settings.train.seed),
        latent_factor=args.factor,
        latent_channels=args.channels,
        autoencoder_width=args.width,
    )
    if args.ae_seed is not None:  # another autoencoder initialisation, the same UNet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ae_seed)
            fresh = CollectionAutoencoder(args.channels, args.factor, args.width)
        model.autoencoder.load_state_dict(fresh.state_dict())
    t0 = time.perf_counter()
    ae = train_collection_autoencoder(
        model.autoencoder,
        imgs,
        steps=args.ae_steps,
        batch_size=settings.train.batch_size,
        lr=args.ae_lr,
        crop=args.ae_crop or None,
        generator=torch.Generator().manual_seed(ae_seed),
    )
    with torch.inference_mode():
        z = torch.cat([model.encode(imgs[s : s + 64]) for s in range(0, len(imgs), 64)])
    t1 = time.perf_counter()
    cond = model.label_index(labels)
    loss = fine_tune(model, z, cond, settings, args.steps)
    t2 = time.perf_counter()
    with torch.inference_mode():
        maps = contrast_maps(model, z, cond, settings)
    t3 = time.perf_counter()
    report(
        f"latent {args.ae_res} px / {args.factor} -> {side} x {side} x {args.channels}",
        maps,
        truth,
        ids,
        labels,
        args,
        kinds,
        f"autoencoder {t1 - t0:.0f} ({ae.crop} px crops, last-100 mse {ae.mse:.4f} on [-1, 1]), fine-tune {t2 - t1:.0f} "
        f"(last-100 loss {loss:.4f}), score {t3 - t2:.0f}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
