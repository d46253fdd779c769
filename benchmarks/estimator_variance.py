"""Variance of typicality estimators at equal UNet cost, against a reference at 16x the draws.

Data where images really differ in how typical they are: the motif set's backgrounds and
positions drawn twice with the same seed, once with the circle motif and once with the cross
motif, and blended pixel-wise with a weight a ~ U[0, 1]; every image is scored under "circle",
so its typicality grows with a (a = 1: a clean circle, a = 0: a clean cross). A small model
(16, 32, 32 channels) is trained briefly on clean circle / cross images at 32x32.

Estimators (all unbiased for the same T(x | c) over t in [t_min, t_max]; N draws = 2N UNet inputs):

    plain        t ~ U[t_min, t_max] and eps ~ N(0, I) independent per draw and per image (the paper)
    strat        t stratified (one draw per stratum, own jitter), eps independent, per image
    quasi        t on a randomly shifted grid (Cranley-Patterson rotated van der Corput), per image
    antithetic   t stratified over N/2 pairs, eps and -eps for the two draws of a pair, per image
    shared       stratified t and eps, the same draws for every image (gcmine's estimator; the
                 benchmark checks it against TypicalityEstimator itself)
    shared-anti  shared, with antithetic eps pairs
    shared-quasi shared, with the shifted grid

Control variates are not separately listed: with shared draws, any term common to all images
of a draw cancels from the ranking, which is what a per-draw control variate would remove.

Reference: `strat` with 16 x max(--draws) draws on its own seed. Agreement with it: Spearman of
image-level typicality (map mean) and the mean IoU of the top-1 patch (patch 6 of 32), averaged
over --repeats independent seeds. Target: an estimator at N agrees as well as `plain` at 4N.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/estimator_variance.py [--model-dir DIR]

With --strata H, a study of where in t the ranking signal and noise lie instead: H equal strata of
[t_min, t_max], --per-stratum draws in each, shared by all images. Per stratum it prints the noise
of one draw that matters for ranking (std over draws of an image's draw typicality minus the mean
over images), the signal (std over images of the stratum mean) and the stratum mean's Spearman
with the reference; then what Neyman allocation (n_h proportional to the noise, same estimand)
would be worth in draws, and the agreement of estimators restricted to the lower part of the t
range (a different estimand) resampled from the pool, next to plain at 4N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from gcmodels.data.synthetic import motif_dataset
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion
from gcmodels.mining.patches import top_patches
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import configure_torch

T_MIN, T_MAX = 0.1, 0.7
RES = 32
PATCH = 6
LABELS = ("circle", "cross")


def to_tensor(items) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(it.image) for it in items]).transpose(0, 3, 1, 2).copy())


def train_model(steps: int, per_label: int) -> PixelDiffusion:
    items = motif_dataset(n_per_label=per_label, size=RES, labels=LABELS, seed=1)
    images = to_tensor(items)
    model = PixelDiffusion.create(
        list(LABELS),
        resolution=RES,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        num_train_timesteps=1000,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    )
    cond = model.label_index([it.label for it in items])
    start = time.perf_counter()
    res = train_diffusion(
        model,
        images,
        cond,
        steps=steps,
        batch_size=32,
        lr=2e-3,
        warmup_steps=100,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.15,
        checkpoint_every=100,
        generator=torch.Generator().manual_seed(0),
    )
    print(f"trained {res.steps} steps in {time.perf_counter() - start:.0f} s, final loss {res.history[-1]['loss']:.4f}")
    return model


def blended_set(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """n images scored under 'circle': circle and cross versions of one scene blended with weight a."""
    circ = to_tensor(motif_dataset(n_per_label=n, size=RES, labels=("circle",), seed=seed)).float()
    cros = to_tensor(motif_dataset(n_per_label=n, size=RES, labels=("cross",), seed=seed)).float()
    a = np.random.default_rng(seed).uniform(0, 1, n)
    w = torch.from_numpy(a).float().view(-1, 1, 1, 1)
    return (w * circ + (1 - w) * cros).round().clamp(0, 255).to(torch.uint8), a


# ------------------------------------------------------------------ draws (t fractions, eps)
def _frac(kind: str, m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(m, n) fractions of [0, 1) for t: uniform, stratified (own jitter) or a shifted grid."""
    if kind == "uniform":
        return torch.rand(m, n, generator=g, dtype=torch.float64)
    if kind == "strat":
        return (torch.arange(n, dtype=torch.float64) + torch.rand(m, n, generator=g, dtype=torch.float64)) / n
    if kind == "quasi":  # van der Corput points (a permuted grid for n = 2^k), one random shift per row
        vdc = torch.tensor([int(format(i, "032b")[::-1], 2) / 2**32 for i in range(n)], dtype=torch.float64)
        return (vdc + torch.rand(m, 1, generator=g, dtype=torch.float64)) % 1.0
    raise ValueError(kind)


def draws(variant: str, m: int, n: int, shape: tuple, seed: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t (m, n) long and eps (m, n, *shape) for a variant; shared variants repeat one row."""
    g = torch.Generator().manual_seed(seed)
    shared = variant.startswith("shared")
    rows = 1 if shared else m
    anti = variant.endswith("anti") or variant == "antithetic"
    kind = "uniform" if variant == "plain" else "quasi" if variant.endswith("quasi") else "strat"
    if anti:
        if n % 2:
            raise ValueError("antithetic estimators need an even number of draws")
        frac = _frac(kind, rows, n // 2, g).repeat_interleave(2, dim=1)
        e = torch.randn((rows, n // 2, *shape), generator=g)
        eps = torch.stack([e, -e], dim=2).reshape(rows, n, *shape)
    else:
        frac = _frac(kind, rows, n, g)
        eps = torch.randn((rows, n, *shape), generator=g)
    t = ((T_MIN + frac * (T_MAX - T_MIN)) * T).long().clamp_(0, T - 1)
    return t.expand(m, n), eps.expand(m, n, *shape)


@torch.inference_mode()
def estimate(
    model: PixelDiffusion, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, batch: int
) -> torch.Tensor:
    """Per-pixel typicality maps (m, H, W) with per-image draws t (m, n), eps (m, n, C, H, W)."""
    m, n = t.shape
    h, w = x0.shape[-2:]
    out = torch.zeros(m, h, w)
    img = torch.arange(m).repeat_interleave(n)
    drw = torch.arange(n).repeat(m)
    pairs = batch // 2
    for s in range(0, m * n, pairs):
        i, d = img[s : s + pairs], drw[s : s + pairs]
        e, tt = eps[i, d], t[i, d]
        x_t = model.add_noise(x0[i], e, tt)
        null = torch.zeros_like(cond[i])
        pred = model.predict_noise(x_t.repeat(2, 1, 1, 1), tt.repeat(2), torch.cat([cond[i], null]))
        err = (pred - e.repeat(2, 1, 1, 1)).pow(2).mean(1).view(2, -1, h, w)
        out.index_add_(0, i, err[1] - err[0])
    return out / n


def agreement(maps: torch.Tensor, ref_scores: np.ndarray, ref_boxes: torch.Tensor) -> tuple[float, float]:
    rho = spearmanr(maps.mean((1, 2)).numpy(), ref_scores).statistic
    b, _ = top_patches(maps, PATCH, 1)
    a, r = b[:, 0].float(), ref_boxes[:, 0].float()
    iw = (torch.minimum(a[:, 2], r[:, 2]) - torch.maximum(a[:, 0], r[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], r[:, 3]) - torch.maximum(a[:, 1], r[:, 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (2 * PATCH * PATCH - inter)
    return float(rho), float(iou.mean())


def mean_agreement(
    model: PixelDiffusion,
    x0: torch.Tensor,
    cond: torch.Tensor,
    variant: str,
    n: int,
    ref_scores: np.ndarray,
    ref_boxes: torch.Tensor,
    args,
) -> tuple[float, float]:
    """(Spearman, top-1 IoU) of `variant` at `n` draws with the reference, averaged over the repeats' seeds."""
    m, shape = x0.shape[0], tuple(x0.shape[1:])
    got = [
        agreement(
            estimate(
                model,
                x0,
                cond,
                *draws(variant, m, n, shape, seed=100 * r + n, T=model.num_train_timesteps),
                args.batch_size,
            ),
            ref_scores,
            ref_boxes,
        )
        for r in range(args.repeats)
    ]
    return float(np.mean([g[0] for g in got])), float(np.mean([g[1] for g in got]))


def strata_study(
    model: PixelDiffusion,
    x0: torch.Tensor,
    cond: torch.Tensor,
    ref_scores: np.ndarray,
    ref_boxes: torch.Tensor,
    args,
) -> None:
    """Per-stratum noise and signal of shared draws, Neyman's gain, and t sub-range estimators."""
    m, shape, T = x0.shape[0], tuple(x0.shape[1:]), model.num_train_timesteps
    h_n, j_n = args.strata, args.per_stratum
    g = torch.Generator().manual_seed(555)
    frac = (
        torch.arange(h_n, dtype=torch.float64).view(-1, 1) + torch.rand(h_n, j_n, generator=g, dtype=torch.float64)
    ) / h_n
    t = ((T_MIN + frac * (T_MAX - T_MIN)) * T).long().clamp_(0, T - 1).reshape(-1)
    eps = torch.randn((h_n * j_n, *shape), generator=g)
    pool = torch.stack(
        [
            estimate(
                model,
                x0,
                cond,
                t[k].view(1, 1).expand(m, 1),
                eps[k].view(1, 1, *shape).expand(m, 1, *shape),
                args.batch_size,
            )
            for k in range(h_n * j_n)
        ],
        1,
    ).view(m, h_n, j_n, *x0.shape[-2:])
    img = pool.mean((3, 4))  # (m, H, J) image-level per draw
    noise = (img - img.mean(0, keepdim=True)).std(2).mean(0)  # what a draw adds unevenly to images
    signal = img.mean(2).std(0)
    rho = [spearmanr(img[:, h].mean(1).numpy(), ref_scores).statistic for h in range(h_n)]
    centre = t.view(h_n, j_n).double().mean(1)
    print(f"\n{h_n} strata of t in [{T_MIN}, {T_MAX}] x {T}, {j_n} shared draws each (values x 1e4)")
    print(f"{'t centre':>10}{'noise':>8}{'signal':>8}{'SNR':>7}{'Spearman(stratum mean, ref)':>30}")
    for h in range(h_n):
        print(
            f"{centre[h]:>10.0f}{noise[h] * 1e4:>8.2f}{signal[h] * 1e4:>8.2f}{signal[h] / noise[h]:>7.2f}{rho[h]:>30.3f}"
        )
    gain = float((noise**2).mean() / noise.mean() ** 2)
    print(f"Neyman allocation (same estimand) is worth {gain:.2f} N draws")

    rng = np.random.default_rng(0)
    rows: list[tuple[str, int, float, float]] = []
    for part in (1.0, 1 / 2, 1 / 3):
        strata = np.arange(max(1, round(h_n * part)))
        hi = T_MIN + (T_MAX - T_MIN) * len(strata) / h_n
        for n in args.draws:
            if n > len(strata):
                continue
            groups = np.array_split(strata, n)
            scores = []
            for _ in range(args.resamples):
                picks = [(rng.choice(gr), rng.integers(j_n), len(gr)) for gr in groups]
                maps = sum(pool[:, h, j] * w for h, j, w in picks) / len(strata)
                scores.append(agreement(maps, ref_scores, ref_boxes))
            rows.append((f"shared t<{hi:.2f}", n, *np.mean(scores, 0)))
    plain = {
        n: mean_agreement(model, x0, cond, "plain", n, ref_scores, ref_boxes, args)
        for n in sorted({4 * n for n in args.draws})
    }
    rows += [("plain", n, *plain[n]) for n in plain]
    print(f"\n{'estimator':<18}{'N':>4}{'Spearman':>10}{'top-1 IoU':>11}   vs plain at 4N (Spearman / IoU)")
    for name, n, r, i in rows:
        vs = ""
        if name != "plain":
            pr, pi = plain[4 * n]
            vs = f"   {'yes' if r >= pr else 'no'} / {'yes' if i >= pi else 'no'} ({pr:.3f} / {pi:.3f})"
        print(f"{name:<18}{n:>4}{r:>10.3f}{i:>11.3f}{vs}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="load the trained model from here, or train and save it here")
    ap.add_argument("--steps", type=int, default=800, help="training steps when a model is trained")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--draws", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strata", type=int, default=0, help="run the per-stratum study with this many strata of t")
    ap.add_argument("--per-stratum", type=int, default=16, help="shared draws per stratum in the study")
    ap.add_argument("--resamples", type=int, default=300, help="resampled estimators per N in the study")
    args = ap.parse_args()
    configure_torch(args.threads)
    if args.model_dir and (Path(args.model_dir) / "unet").exists():
        model = PixelDiffusion.load(args.model_dir).eval()
    else:
        model = train_model(args.steps, per_label=200)
        if args.model_dir:
            model.save(args.model_dir)
    images, a = blended_set(args.images, seed=7)
    x0 = model.encode(images)
    m = x0.shape[0]
    cond = model.label_index(["circle"] * m)
    T = model.num_train_timesteps
    shape = tuple(x0.shape[1:])
    start = time.perf_counter()

    # gcmine's own estimator is the 'shared' variant: check the benchmark's arithmetic against it.
    est = TypicalityEstimator(draws=4, t_min=T_MIN, t_max=T_MAX, batch_size=args.batch_size, seed=3)
    t_s, e_s = est.sample_draws(T, shape)
    k = min(8, m)
    ours = est.maps(model, x0[:k], cond[:k])
    mine = estimate(model, x0[:k], cond[:k], t_s.expand(k, -1), e_s.expand(k, *e_s.shape), args.batch_size)
    assert torch.allclose(ours, mine, atol=1e-5), "benchmark estimator disagrees with TypicalityEstimator"

    n_ref = 16 * max(args.draws)
    t, eps = draws("strat", m, n_ref, shape, seed=10_000, T=T)
    ref = estimate(model, x0, cond, t, eps, args.batch_size)
    ref_scores = ref.mean((1, 2)).numpy()
    ref_boxes, _ = top_patches(ref, PATCH, 1)
    print(
        f"{m} blended images at {RES}x{RES} under 'circle'; reference: {n_ref} stratified draws per image "
        f"({time.perf_counter() - start:.0f} s); Spearman(reference typicality, blend weight a) = "
        f"{spearmanr(ref_scores, a).statistic:.3f}"
    )
    if args.strata:
        strata_study(model, x0, cond, ref_scores, ref_boxes, args)
        print(f"total {time.perf_counter() - start:.0f} s, {torch.get_num_threads()} torch thread(s)")
        return 0

    variants = ["plain", "strat", "quasi", "antithetic", "shared", "shared-anti", "shared-quasi"]
    plain_ns = sorted(set(args.draws) | {4 * n for n in args.draws})
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for variant in variants:
        for n in plain_ns if variant == "plain" else args.draws:
            results[(variant, n)] = mean_agreement(model, x0, cond, variant, n, ref_scores, ref_boxes, args)
    print(f"{'estimator':<14}{'N':>4}{'UNet inputs/img':>17}{'Spearman':>10}{'top-1 IoU':>11}")
    for (variant, n), (rho, iou) in results.items():
        print(f"{variant:<14}{n:>4}{2 * n:>17}{rho:>10.3f}{iou:>11.3f}")
    print(f"\nper estimator: does it at N agree as well as plain at 4N? (Spearman / top-1 IoU), repeats={args.repeats}")
    for variant in variants[1:]:
        cells = []
        for n in args.draws:
            rho, iou = results[(variant, n)]
            prho, piou = results[("plain", 4 * n)]
            cells.append(f"N={n}: {'yes' if rho >= prho else 'no'}/{'yes' if iou >= piou else 'no'}")
        print(f"{variant:<14}" + "  ".join(cells))
    print(f"total {time.perf_counter() - start:.0f} s, {torch.get_num_threads()} torch thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
