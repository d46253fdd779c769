"""Every encoder x every clusterer on scikit-learn's digits (1797 real handwritten digits, 10 classes).

The 8x8 digits are scaled to uint8, upsampled to 32x32 RGB (the working resolution) and embedded
by every encoder of `gcmodels.embedding.encoders` (plus the raw 64 pixels, the classic baseline); every
embedding is clustered by every method of `gcmodels.clustering.fitting` (k = 10 for the methods that take
k; DBSCAN's eps estimated from the data), and NMI / ARI against the digit labels are printed,
for each dimensionality reduction asked for. Then the choice of k by silhouette and by BIC.

Targets: the best pair reaches NMI >= 0.85; deep embedded clustering beats k-means on raw pixels.

    .venv/bin/python benchmarks/clustering_digits.py [--reduce none umap] [--clip-path DIR]
        [--diffusion-steps 800] [--diffusion-resolution 16] [--threads 1]

The diffusion encoder needs a model trained on the collection: a default-size PixelDiffusion is
trained here on the digits (with their labels, as the finetune stage does) for --diffusion-steps
steps (0 = skip), at --diffusion-resolution with --diffusion-channels (smaller than the default
model, to keep the benchmark within minutes on 2 cores). CLIP needs a local model directory (--clip-path); without one its row says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from gcmodels.clustering.estimators import choose_k
from gcmodels.clustering.fitting import fit_clustering
from gcmodels.config import ClusterConfig, EmbedConfig, ModelConfig, TrainConfig
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion
from gcmodels.embedding.encoders import make_encoder
from gcmodels.runtime import configure_torch

CLUSTERERS = ("kmeans", "gmm", "dbscan", "hdbscan", "agglomerative", "dec")
# the Gaussian mixture uses full covariances up to this dimension, diagonal ones above
_FULL_COV_MAX_DIM = 64


def digits_images(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw pixels (n, 64) float64, images (n, res, res, 3) uint8, labels (n,) int)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (n, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return d.data.astype(np.float64), np.ascontiguousarray(images), d.target


def train_digits_diffusion(
    images: np.ndarray, labels: np.ndarray, steps: int, resolution: int, channels: tuple[int, ...]
) -> tuple[PixelDiffusion, float]:
    """A PixelDiffusion trained on the digits at `resolution` with their labels (as finetune does)."""
    mc, tc = ModelConfig(), TrainConfig()
    names = [str(i) for i in range(10)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(resolution, resolution), mode="area").round().clamp(0, 255).to(torch.uint8)
    model = PixelDiffusion.create(
        names,
        resolution=resolution,
        block_out_channels=channels,
        layers_per_block=mc.layers_per_block,
        num_train_timesteps=mc.num_train_timesteps,
        beta_schedule=mc.beta_schedule,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    train_diffusion(
        model,
        x.contiguous(),
        torch.as_tensor(labels + 1, dtype=torch.long),
        steps=steps,
        **tc.trainer_settings(),
        generator=torch.Generator().manual_seed(0),
    )
    return model.eval(), time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduce", nargs="+", default=["none", "umap"], choices=["none", "pca", "umap"])
    ap.add_argument("--reduce-dim", type=int, default=10)
    ap.add_argument("--clip-path", default=None, help="local CLIP model directory (transformers layout)")
    ap.add_argument("--diffusion-steps", type=int, default=800, help="training steps of the diffusion model (0 = skip)")
    ap.add_argument("--diffusion-resolution", type=int, default=16, help="side of the diffusion model's images")
    ap.add_argument("--diffusion-channels", type=int, nargs="+", default=[32, 64], help="its UNet channels per level")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (1 is fastest for these small problems on a busy 2-core machine)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    configure_torch(args.threads)
    with threadpool_limits(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> int:
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*n_jobs value.*")

    raw, images, y = digits_images(32)
    print(
        f"digits: {len(y)} images, 10 classes, upsampled to {images.shape[1]}x{images.shape[2]}; "
        f"torch and BLAS threads {args.threads}\n"
    )

    # ---------------------------------------------------------------- encoders
    embeddings: dict[str, np.ndarray] = {"raw-pixels": raw}
    notes: dict[str, str] = {"raw-pixels": "the 64 pixel values (baseline, no encoder)"}
    seconds: dict[str, float] = {"raw-pixels": 0.0}
    for method in ("pca", "autoencoder", "vae", "clip", "diffusion"):
        extra: dict = {}
        cfg = EmbedConfig(method=method, seed=args.seed) if method != "clip" else None
        if method == "clip":
            if not args.clip_path:
                notes["clip"] = "skipped: no local CLIP directory (--clip-path)"
                continue
            cfg = EmbedConfig(method="clip", clip_path=args.clip_path)
        if method == "diffusion":
            if args.diffusion_steps <= 0:
                notes["diffusion"] = "skipped (--diffusion-steps 0)"
                continue
            model, train_s = train_digits_diffusion(
                images, y, args.diffusion_steps, args.diffusion_resolution, tuple(args.diffusion_channels)
            )
            extra["diffusion"] = model
        start = time.perf_counter()
        encoder = make_encoder(cfg, **extra)
        embeddings[method] = encoder.fit_transform(images)
        seconds[method] = time.perf_counter() - start
        meta = encoder.describe()
        if method == "diffusion":
            seconds[method] += train_s
            meta["train_steps"] = args.diffusion_steps
            meta["channels"] = "x".join(map(str, args.diffusion_channels))
        notes[method] = ", ".join(f"{k}={v}" for k, v in meta.items() if k not in ("labels",))
    print("encoders:")
    for name, text in notes.items():
        dim = f"{embeddings[name].shape[1]:4d}-d" if name in embeddings else "  -  "
        took = f"{seconds[name]:6.1f}s" if name in seconds else "      "
        print(f"  {name:12s} {dim} {took}  {text}")

    # ---------------------------------------------------------------- clusterers
    results: list[tuple[str, str, str, float, float]] = []
    for reduce in args.reduce:
        if reduce == "umap" and importlib.util.find_spec("umap") is None:
            print("\nreduce=umap: skipped, umap-learn is not installed (pip install umap-learn)")
            continue
        print(
            f"\nreduce={reduce}"
            + (f" to {args.reduce_dim} dims" if reduce != "none" else "")
            + ": NMI/ARI, then the share of noise (nX.XX) or the seconds (k = 10 where k is taken; "
            + f"gmm: full covariances up to {_FULL_COV_MAX_DIM} dims, diagonal above)"
        )
        print(f"  {'encoder':12s} " + " ".join(f"{m:>17s}" for m in CLUSTERERS))
        for name, X in embeddings.items():
            cells = []
            for method in CLUSTERERS:
                dim = X.shape[1] if reduce == "none" else min(args.reduce_dim, X.shape[1])
                cfg = ClusterConfig(
                    method=method,
                    k=None if method in ("dbscan", "hdbscan") else 10,
                    reduce=reduce,
                    reduce_dim=args.reduce_dim,
                    seed=args.seed,
                    # full covariances in hundreds of dimensions from 1797 rows: singular and slow
                    covariance_type="full" if dim <= _FULL_COV_MAX_DIM else "diag",
                )
                start = time.perf_counter()
                res = fit_clustering(X, cfg)
                took = time.perf_counter() - start
                nmi = normalized_mutual_info_score(y, res.assignments)
                ari = adjusted_rand_score(y, res.assignments)
                results.append((reduce, name, method, nmi, ari))
                noise = res.metadata["noise_fraction"]
                cells.append(f"{nmi:.3f}/{ari:.3f}" + (f" n{noise:.2f}" if noise > 0 else f" {took:4.0f}s"))
            print(f"  {name:12s} " + " ".join(f"{c:>17s}" for c in cells))

    # ---------------------------------------------------------------- choice of k
    print("\nchoice of k (true k = 10), k in [2, 16], no reduction:")
    print(f"  {'encoder':12s} {'silhouette (k-means)':>22s} {'BIC (diag GMM)':>16s}")
    for name, X in embeddings.items():
        k_sil, _ = choose_k(X, 2, 16, n_init=2, max_iter=100, random_state=args.seed)
        from gcmodels.clustering.estimators import GMM_TOL, GaussianMixture

        k_bic, _ = choose_k(
            X,
            2,
            16,
            n_init=1,
            max_iter=100,
            random_state=args.seed,
            criterion="bic",
            make_estimator=lambda k: GaussianMixture(
                k, covariance_type="diag", max_iter=100, tol=GMM_TOL, random_state=args.seed
            ),
        )
        print(f"  {name:12s} {k_sil:>22d} {k_bic:>16d}")

    # ---------------------------------------------------------------- targets
    best = max(results, key=lambda r: r[3])
    by = {(r[0], r[1], r[2]): r for r in results}
    print(
        f"\nbest pair: {best[1]} + {best[2]} (reduce={best[0]}): NMI {best[3]:.3f}, ARI {best[4]:.3f} "
        f"-> target NMI >= 0.85: {'met' if best[3] >= 0.85 else 'NOT met'}"
    )
    km, dec = by.get(("none", "raw-pixels", "kmeans")), by.get(("none", "raw-pixels", "dec"))
    if km and dec:
        print(
            f"raw pixels: DEC NMI {dec[3]:.3f} / ARI {dec[4]:.3f} vs k-means NMI {km[3]:.3f} / ARI {km[4]:.3f} "
            f"-> DEC beats k-means: {'yes' if dec[3] > km[3] and dec[4] > km[4] else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
