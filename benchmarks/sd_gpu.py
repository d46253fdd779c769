"""The Stable Diffusion path on a GPU: fine-tuning samples/s (gcmine's trainer, and the training
step of diffusers' own text-to-image script on the same UNet), typicality images/s at N draws,
GPU memory peak, the share of the GPU's dense matmul peak that scoring reaches, and the paper's
way of scoring (10 draws x 2 prompts per forward in fp16, the full loss tensor copied to the
host and reduced afterwards) on the same UNet and latents, in the same run.

    .venv/bin/python benchmarks/sd_gpu.py --base /models/stable-diffusion-v1-5   # a real checkpoint
    .venv/bin/python benchmarks/sd_gpu.py                                        # a random SD-1.5-sized UNet
    .venv/bin/python benchmarks/sd_gpu.py --tiny --device cpu                    # smoke test (seconds)

Without `--base`, the UNet has SD v1.5's architecture (859 M parameters, 4 latent channels,
cross-attention over 77 x 768 text states) with random weights and random prompt embeddings:
speed does not depend on the weights. Latents are random (C, res/8, res/8). Scoring runs the
product's `TypicalityEstimator` (shared draws, both branches in one batch, maps reduced on the
device); fine-tuning runs the product's `train_diffusion` (AdamW, clipping, autocast).

FLOPs per UNet input are counted once with `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions and attention, 2 FLOPs per multiply-add; `count_flops` adds the CPU SDPA kernel, for
which torch has no formula and counted 0); the peak is the GPU's dense bf16/fp16 tensor-core
rate (a table of common GPUs, or `--peak-tflops`).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcmodels.diffusion.base import ConditionalDiffusion
from gcmodels.diffusion.parametrisation import SD_REFERENCE_SCHEDULE, ddpm_alphas_cumprod
from gcmodels.diffusion.training import checkpointing_needed, probe_step_memory, train_diffusion
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.runtime import PRECISION_DTYPES, configure_torch, resolve_device, resolve_precision

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}
SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4,
    out_channels=4,
)
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4,
    out_channels=4,
    norm_num_groups=8,
)


class RandomPromptUNet(ConditionalDiffusion):
    """A UNet2DConditionModel with fixed random prompt embeddings (index 0 = the null prompt) and
    SD's scaled-linear schedule: the conditional-diffusion interface the estimator and the trainer
    use (`ConditionalDiffusion`: its noising, eps-space prediction and training loss), without
    weights to load."""

    def __init__(self, unet: UNet2DConditionModel, labels: int, seq: int, generator: torch.Generator) -> None:
        super().__init__([f"label {i}" for i in range(labels)], ddpm_alphas_cumprod(**SD_REFERENCE_SCHEDULE), "epsilon")
        self.unet = unet
        dim = unet.config.cross_attention_dim
        self.register_buffer("prompts", torch.randn(labels + 1, seq, dim, generator=generator), persistent=False)

    @property
    def network(self) -> nn.Module:
        return self.unet

    def _denoise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x_t.to(self.dtype), t, encoder_hidden_states=self.prompts[cond].to(self.dtype)).sample

    def feature_blocks(self):
        return self.unet.up_blocks

    def half_precision(self, dtype: torch.dtype) -> RandomPromptUNet:
        self.unet.to(dtype=dtype)
        return self


def build_model(args: argparse.Namespace, generator: torch.Generator) -> nn.Module:
    if args.base:
        from gcmodels.diffusion import load_base

        return load_base(args.base, ["label a", "label b"])
    config = TINY_UNET if args.tiny else SD15_UNET
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=args.resolution // 8, **config)
    return RandomPromptUNet(unet, labels=2, seq=77, generator=generator)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """FLOPs of the CPU SDPA kernel: q k^T and (scores) v, as torch counts its CUDA kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query.shape, key.shape, value.shape)


_cpu_sdpa_flops._get_raw = True  # FlopCounterMode passes the tensors, not shapes


def count_flops(fn) -> float:
    """FLOPs of `fn()` by torch's FLOP counter, attention included on every device: torch 2.x has
    formulas for the CUDA SDPA kernels only, and on a CPU SDPA runs
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which it counted as 0 (on the meta device
    SDPA decomposes into counted bmm's)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())


def flops_per_input(model: nn.Module, latent: tuple[int, ...], device: torch.device) -> float:
    """UNet FLOPs of one input (batch 1), attention included (`count_flops`)."""
    x = torch.zeros((1, *latent), device=device)
    t = torch.full((1,), 500, dtype=torch.long, device=device)
    c = torch.ones(1, dtype=torch.long, device=device)
    return count_flops(lambda: model.predict_noise(x, t, c))


def gpu_peak(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():  # the most specific names come first
        if key in name:
            return value, name
    return None, f"{name} (unknown peak: pass --peak-tflops)"


def bench_training(model, latents, cond, args, device, precision) -> dict:
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    reset_peak(device)
    common = dict(
        batch_size=args.train_batch,
        lr=1e-5,
        warmup_steps=0,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.1,
        checkpoint_every=10**9,
        lr_schedule="constant",
        precision=precision,
    )
    train_diffusion(model, latents, cond, steps=args.warmup, generator=torch.Generator().manual_seed(0), **common)
    sync(device)
    start = time.perf_counter()
    train_diffusion(model, latents, cond, steps=args.train_steps, generator=torch.Generator().manual_seed(1), **common)
    sync(device)
    seconds = time.perf_counter() - start
    model.eval()
    if args.gradient_checkpointing:
        model.unet.disable_gradient_checkpointing()
    return {
        "samples/s": args.train_steps * args.train_batch / seconds,
        "peak GiB": peak_memory(device),
        "seconds": seconds,
    }


def bench_diffusers_style(model, latents, cond, args, device, precision) -> dict:
    """The training step of diffusers' own text-to-image script (examples/text_to_image/
    train_text_to_image.py) on the same UNet, batch and precision, for comparison with
    `train_diffusion`: noise and timesteps drawn on the device, `DDPMScheduler.add_noise`, the
    UNet under autocast, ``F.mse_loss(pred.float(), target.float())``, backward, grad-norm
    clipping, torch's default AdamW (the script's without --use_8bit_adam), zero_grad. The
    prompt embeddings are precomputed (the script runs its frozen text encoder each step)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    unet = model.unet
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2)
    x_all, c_all = latents.to(device), cond.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=PRECISION_DTYPES[precision]) if precision != "fp32" else nullcontext()

    def step() -> None:
        idx = torch.randint(0, x_all.shape[0], (args.train_batch,), device=device, generator=g)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, device=device, generator=g)
        t = torch.randint(0, 1000, (args.train_batch,), device=device, generator=g)
        noisy = sched.add_noise(x0, noise, t)
        with autocast:
            pred = unet(noisy, t, encoder_hidden_states=model.prompts[c_all[idx]]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    reset_peak(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    unet.eval()
    if args.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    return {
        "samples/s": args.train_steps * args.train_batch / seconds,
        "peak GiB": peak_memory(device),
        "seconds": seconds,
    }


@torch.inference_mode()
def score_gcmine(model, latents, cond, draws, batch, device) -> tuple[float, Tensor]:
    est = TypicalityEstimator(draws=draws, batch_size=batch)
    est.maps(model, latents[: max(1, batch // (2 * draws))], cond[: max(1, batch // (2 * draws))])  # warm-up
    sync(device)
    start = time.perf_counter()
    maps = est.maps(model, latents, cond)
    sync(device)
    return time.perf_counter() - start, maps


@torch.inference_mode()
def bench_features(model, latents, cond, feature_batch: int, device, draws: int = 8) -> float:
    """Seconds for the patch features of every image, chunked as `tasks.rank` chunks them
    (`feature_batch // draws` images, each under `draws` noise draws, per forward)."""
    noise = torch.randn((draws, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
    chunk = max(1, feature_batch // draws)
    model.decoder_features(latents[:chunk], cond[:chunk], 161, noise, 1)  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(0, latents.shape[0], chunk):
        model.decoder_features(latents[i : i + chunk], cond[i : i + chunk], 161, noise, 1)
    sync(device)
    return time.perf_counter() - start


@torch.inference_mode()
def score_reference(model, latents, cond, draws, device) -> tuple[float, float, Tensor]:
    """The paper's code path: per image, forwards of 10 draws x 2 prompts (20 inputs) in fp16; the
    (10, 2, C, h, w) squared errors of each forward copied to the host as float16 and kept; the
    maps reduced from the full (N, 2, C, h, w) tensor afterwards. Returns (seconds, bytes kept
    per image, maps)."""
    gen = torch.Generator().manual_seed(0)
    n, c, h, w = latents.shape
    t_all = (torch.rand(draws, generator=gen) * 0.6 + 0.1).mul(1000).long()
    eps_all = torch.randn((draws, c, h, w), generator=gen).to(device)
    null = torch.zeros(10, dtype=torch.long, device=device)
    sync(device)
    start = time.perf_counter()
    kept = []
    for i in range(n):
        per_image = []
        for s in range(0, draws, 10):
            t = t_all[s : s + 10].to(device)
            eps = eps_all[s : s + 10]
            k = t.shape[0]
            x_t = model.add_noise(latents[i : i + 1].expand(k, -1, -1, -1), eps, t)
            pred = model.predict_noise(
                torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond[i].expand(k), null[:k]])
            )
            err = (pred - torch.cat([eps, eps]).to(pred.dtype)).pow(2)  # fp16, (2k, C, h, w)
            per_image.append(err.view(2, k, c, h, w).transpose(0, 1).to(torch.float16).cpu().numpy())
        kept.append(np.concatenate(per_image))  # (N, 2, C, h, w) float16 on the host
    maps = torch.from_numpy(np.stack([(k[:, 1].astype(np.float32) - k[:, 0]).mean((0, 1)) for k in kept]))
    seconds = time.perf_counter() - start
    return seconds, float(kept[0].nbytes), maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="a local diffusers SD directory (default: a random SD-1.5-sized UNet)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--resolution", type=int, default=256, help="image side; latents are resolution / 8")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--draws", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128, 256], help="score.batch_size values tried")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also score through torch.compile (runtime.compile)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--feature-batch",
        type=int,
        nargs="*",
        default=[64],
        help="rank.feature_batch values tried for patch features (8 draws, block 1, as `rank` runs them)",
    )
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--tiny", action="store_true", help="a tiny UNet (smoke test on a CPU)")
    args = ap.parse_args()

    configure_torch(None)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    half = PRECISION_DTYPES[precision] if precision != "fp32" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(0)
    model = build_model(args, g).to(device)
    latent = (4, args.resolution // 8, args.resolution // 8)
    latents = torch.randn((args.images, *latent), generator=g).to(device)
    cond = (torch.arange(args.images) % 2 + 1).to(device)
    n_params = sum(p.numel() for p in model.unet.parameters())
    peak, gpu = gpu_peak(device, args.peak_tflops)
    print(
        f"# {gpu}; device {device}; precision {precision}; UNet {n_params / 1e6:.0f} M parameters; "
        f"latents {latent}; {args.images} images; torch {torch.__version__}"
    )

    if not args.no_train:
        # gcmine's precision, then the paper's fine-tuning (fp32, no autocast) on the same model
        runs = [precision] + (["fp32"] if precision != "fp32" else [])
        print(
            f"\n## fine-tuning (batch {args.train_batch}, AdamW, grad clip"
            f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; fp32 = the paper's setting)"
        )
        step = probe_step_memory(model, latents[:1], cond[:1], precision)
        if step is not None:
            free, total = torch.cuda.mem_get_info(device)
            on, need = checkpointing_needed(free, step, args.train_batch)
            print(
                f"train.gradient_checkpointing=auto would turn it {'on' if on else 'off'}: probe {step['per_sample'] / 2**30:.2f}"
                f" GiB a sample, {step['fixed'] / 2**30:.2f} GiB fixed, {step['grads'] / 2**30:.2f} GiB of gradients; need"
                f" ~{need / 2**30:.1f} GiB at batch {args.train_batch}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free\n"
            )
        print("| trainer | precision | samples/s | steps/s | peak GPU memory GiB |\n|---|---|---|---|---|")
        for p in runs:
            for name, bench in (("gcmine", bench_training), ("diffusers' script", bench_diffusers_style)):
                tr = bench(model, latents.cpu(), cond.cpu(), args, device, p)
                print(
                    f"| {name} | {p} | {tr['samples/s']:.1f} | {tr['samples/s'] / args.train_batch:.2f} |"
                    f" {tr['peak GiB']:.1f} |"
                )

    if half is not None:
        model.half_precision(half)
    flops = flops_per_input(model, latent, device)
    print(f"\nUNet forward: {flops / 1e9:.3f} GFLOP per input at latents {latent} (FlopCounterMode)")
    print(
        f"\n## scoring (gcmine: TypicalityEstimator, UNet in {precision}, loss math fp32, maps reduced on the device)"
    )
    print("| N | batch | images/s | forwards/s | TFLOP/s | share of peak | peak GPU memory GiB |")
    print("|---|---|---|---|---|---|---|")
    best: dict[int, tuple[float, Tensor]] = {}
    for n in args.draws:
        for b in args.batch:
            reset_peak(device)
            seconds, maps = score_gcmine(model, latents, cond, n, b, device)
            ips = args.images / seconds
            fwd = ips * 2 * n
            tflops = fwd * flops / 1e12
            share = f"{tflops / peak:.1%}" if peak else "n/a"
            print(f"| {n} | {b} | {ips:.2f} | {fwd:.0f} | {tflops:.1f} | {share} | {peak_memory(device):.1f} |")
            if n not in best or ips > args.images / best[n][0]:
                best[n] = (seconds, maps)

    if args.compile:
        print("\n## scoring through torch.compile (runtime.compile: inductor, channels_last, cudnn.benchmark)")
        print(
            "| N | batch | eager images/s | compiled images/s | speed-up | first (compiling) run s | max |maps diff| / max |map| |"
        )
        print("|---|---|---|---|---|---|---|")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        view = model.compiled()
        for n in args.draws:
            b = args.batch[-1]
            est = TypicalityEstimator(draws=n, batch_size=b)
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode():
                est.maps(view, latents, cond)  # compiles for every batch shape of the run
            sync(device)
            first = time.perf_counter() - start
            with torch.inference_mode():
                sync(device)
                start = time.perf_counter()
                maps = est.maps(view, latents, cond)
                sync(device)
            seconds = time.perf_counter() - start
            eager_s, eager_maps = score_gcmine(model, latents, cond, n, b, device)
            diff = float((maps - eager_maps).abs().max() / eager_maps.abs().max())
            print(
                f"| {n} | {b} | {args.images / eager_s:.2f} | {args.images / seconds:.2f} | {eager_s / seconds:.2f}x |"
                f" {first:.1f} | {diff:.2e} |"
            )

    if args.feature_batch:
        print(f"\n## patch features (rank: 8 feature draws, decoder block 1, t = 161, UNet in {precision})")
        print("| rank.feature_batch | images per forward | images/s | peak GPU memory GiB |\n|---|---|---|---|")
        for fb in args.feature_batch:
            reset_peak(device)
            seconds = bench_features(model, latents, cond, fb, device)
            print(f"| {fb} | {max(1, fb // 8)} | {args.images / seconds:.2f} | {peak_memory(device):.1f} |")

    if not args.no_reference:
        ref_model = model
        if device.type == "cuda":
            ref_model.half_precision(torch.float16)  # the paper's code: fp16
        print("\n## the reference approach (10 draws x 2 prompts per forward, fp16, loss tensor to the host)")
        print(
            "| N | ref images/s | gcmine images/s (best batch) | speed-up | ref bytes kept/img | gcmine bytes/img (map) |"
        )
        print("|---|---|---|---|---|---|")
        for n in args.draws:
            reset_peak(device)
            seconds, nbytes, _ = score_reference(ref_model, latents, cond, n, device)
            ours = args.images / best[n][0]
            map_bytes = latent[1] * latent[2] * 4
            print(
                f"| {n} | {args.images / seconds:.2f} | {ours:.2f} | {ours * seconds / args.images:.2f}x | "
                f"{nbytes:.0f} | {map_bytes} |"
            )


if __name__ == "__main__":
    main()
