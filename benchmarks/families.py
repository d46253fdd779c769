"""The denoisers of every family gcmine mines with, at full size with random weights: parameters,
GFLOP per UNet / transformer input at 256 / 512 / 1024 px (attention counted), one forward timed on
the CPU and its peak RAM where the fp32 weights fit in memory, and on a GPU the scoring throughput.

    .venv/bin/python benchmarks/families.py                        # params + GFLOP of every architecture (meta device, seconds)
    .venv/bin/python benchmarks/families.py --time                 # + one CPU forward at 256 px each, in its own process
    .venv/bin/python benchmarks/families.py --device cuda --score  # GPU: images/s at N=16 and 100, share of the bf16 peak
    .venv/bin/python benchmarks/families.py --base DIR --device cuda --score   # a real checkpoint's denoiser
    .venv/bin/python benchmarks/families.py --tiny --time --score  # smoke test (tiny configs, CPU, seconds)

Architectures (configs of the published checkpoints' ``config.json``): SD 1.5 and SD 2.1-768-v UNets,
the SDXL base UNet, the SD3-medium, SD3.5-medium and SD3.5-large MMDiTs, DiT-XL/2 at 256 and 512.
Parameters and FLOPs are counted on the meta device (no memory, no weights): SDPA decomposes into
counted matmuls there, and `sd_gpu.count_flops` counts the CPU SDPA kernel torch has no formula
for. Inputs are one latent (C, res/8, res/8) with the family's conditioning at its real shapes
(77 x 768 / 1024 / 2048 CLIP states, SDXL's pooled embeds and time ids, SD3's 77 + 256 tokens of
4096 and 2048 pooled, a DiT class id); a DiT only takes its fixed sample size.

The timed forward materialises the weights (fp32, N(0, 0.02)) in a fresh process per architecture,
skipped when they would exceed ``--max-gb`` (SD3.5-large's 8 B parameters are 32 GB in fp32).
On a GPU (``--score``) the denoiser runs in bf16 behind `RandomConditioned`, a `ConditionalDiffusion`
with random conditioning of the real shapes, through the product's `TypicalityEstimator` (both
branches of a draw in one batch, a flow model's velocity converted to eps); share of peak = FLOPs
per input x 2 N x images/s over the GPU's dense bf16 rate (`sd_gpu.PEAK_TFLOPS` or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sd_gpu import count_flops, gpu_peak

from gcmodels.diffusion.base import ConditionalDiffusion
from gcmodels.diffusion.parametrisation import SD_REFERENCE_SCHEDULE, ddpm_alphas_cumprod

SD15 = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4,
    out_channels=4,
    sample_size=64,
)
SD21 = {
    **SD15,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "upcast_attention": True,
    "sample_size": 96,
}
SDXL = dict(
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    in_channels=4,
    out_channels=4,
    sample_size=128,
)
SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)
SD35_MEDIUM = {
    **SD3_MEDIUM,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD35_LARGE = {
    **SD3_MEDIUM,
    "num_layers": 38,
    "num_attention_heads": 38,
    "caption_projection_dim": 2432,
    "qk_norm": "rms_norm",
}
DIT_XL = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
)

# name -> (family, diffusers class, config, conditioning widths)
ARCHITECTURES = {
    "SD 1.5 UNet": ("sd", "UNet2DConditionModel", SD15, {"states": (77, 768)}),
    "SD 2.1-768-v UNet": ("sd", "UNet2DConditionModel", SD21, {"states": (77, 1024)}),
    "SDXL base UNet": ("sdxl", "UNet2DConditionModel", SDXL, {"states": (77, 2048), "pooled": 1280}),
    "SD3-medium MMDiT": ("sd3", "SD3Transformer2DModel", SD3_MEDIUM, {"states": (77 + 256, 4096), "pooled": 2048}),
    "SD3.5-medium MMDiT": ("sd3", "SD3Transformer2DModel", SD35_MEDIUM, {"states": (77 + 256, 4096), "pooled": 2048}),
    "SD3.5-large MMDiT": ("sd3", "SD3Transformer2DModel", SD35_LARGE, {"states": (77 + 256, 4096), "pooled": 2048}),
    "DiT-XL/2-256": ("dit", "DiTTransformer2DModel", DIT_XL, {}),
    "DiT-XL/2-512": ("dit", "DiTTransformer2DModel", {**DIT_XL, "sample_size": 64}, {}),
}
TINY = {
    "tiny SD UNet": (
        "sd",
        "UNet2DConditionModel",
        dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            in_channels=4,
            out_channels=4,
            sample_size=8,
        ),
        {"states": (77, 32)},
    ),
    "tiny SD3 MMDiT": (
        "sd3",
        "SD3Transformer2DModel",
        dict(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=32,
            out_channels=16,
            pos_embed_max_size=64,
        ),
        {"states": (77 + 256, 32), "pooled": 32},
    ),
    "tiny DiT": (
        "dit",
        "DiTTransformer2DModel",
        {**DIT_XL, "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, "sample_size": 8},
        {},
    ),
}
RESOLUTIONS = (256, 512, 1024)


def build(cls_name: str, config: dict, device: str | torch.device = "meta"):
    import diffusers

    with torch.device(device):
        return getattr(diffusers, cls_name)(**config)


def native_px(family: str, config: dict) -> int | None:
    """A DiT only takes its sample size (x 8 px); the others any size."""
    return config["sample_size"] * 8 if family == "dit" else None


class RandomConditioned(ConditionalDiffusion):
    """A denoiser of a family with random conditioning of the family's shapes for `labels` + null:
    the conditional diffusion interface the estimator uses, without text encoders or weights to
    load. Calls the network as the family module does (`gcmodels.diffusion.<family>`)."""

    def __init__(
        self, family: str, network, widths: dict, labels: int = 2, generator: torch.Generator | None = None
    ) -> None:
        prediction = "flow_matching" if family == "sd3" else "epsilon"
        super().__init__(
            [f"label {i}" for i in range(labels)], ddpm_alphas_cumprod(**SD_REFERENCE_SCHEDULE), prediction
        )
        self.family_name, self.net = family, network
        g = generator or torch.Generator().manual_seed(0)
        if "states" in widths:
            self.register_buffer("states", torch.randn(labels + 1, *widths["states"], generator=g), persistent=False)
        if "pooled" in widths:
            self.register_buffer("pooled", torch.randn(labels + 1, widths["pooled"], generator=g), persistent=False)
        null_class = network.config.get("num_embeds_ada_norm") or 0  # DiT: the extra (null) class embedding
        self.register_buffer("classes", torch.tensor([null_class, *range(labels)]), persistent=False)

    @property
    def network(self):
        return self.net

    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.family_name == "dit":
            return self.net(x, timestep=timestep, class_labels=self.classes[cond]).sample[:, : x.shape[1]]
        states = self.states[cond].to(self.dtype)
        if self.family_name == "sd3":
            return self.net(
                hidden_states=x,
                timestep=timestep.to(self.dtype),
                encoder_hidden_states=states,
                pooled_projections=self.pooled[cond].to(self.dtype),
            ).sample
        if self.family_name == "sdxl":
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            ids = torch.tensor([h, w, 0, 0, h, w], device=x.device, dtype=self.dtype).expand(x.shape[0], -1)
            return self.net(
                x,
                timestep,
                encoder_hidden_states=states,
                added_cond_kwargs={"text_embeds": self.pooled[cond].to(self.dtype), "time_ids": ids},
            ).sample
        return self.net(x, timestep, encoder_hidden_states=states).sample

    def feature_blocks(self):
        return getattr(self.net, "up_blocks", None) or self.net.transformer_blocks


def one_input(model: RandomConditioned, px: int, device) -> tuple[Tensor, Tensor, Tensor]:
    c = model.net.config.in_channels
    x = torch.zeros((1, c, px // 8, px // 8), device=device)
    return x, torch.full((1,), 500, dtype=torch.long, device=device), torch.ones(1, dtype=torch.long, device=device)


def flops_at(model: RandomConditioned, px: int, device) -> float:
    x, t, c = one_input(model, px, device)
    return count_flops(lambda: model.predict_noise(x, t, c))


def meta_table(archs: dict) -> None:
    print("## parameters and GFLOP per input (meta device, attention counted)\n")
    print("| architecture | family | parameters | fp32 GB | " + " | ".join(f"GFLOP @{r}" for r in RESOLUTIONS) + " |")
    print("|---|---|---|---|" + "---|" * len(RESOLUTIONS))
    for name, (family, cls_name, config, widths) in archs.items():
        net = build(cls_name, config)
        model = RandomConditioned(family, net, widths).to("meta")
        n = sum(p.numel() for p in net.parameters())
        native = native_px(family, config)
        cells = []
        for r in RESOLUTIONS:
            cells.append(f"{flops_at(model, r, 'meta') / 1e9:.1f}" if native in (None, r) else "n/a")
        if native is not None and native not in RESOLUTIONS:
            cells[-1] += f" ({flops_at(model, native, 'meta') / 1e9:.1f} @{native})"
        print(f"| {name} | {family} | {n / 1e6:,.1f} M | {4 * n / 1e9:.1f} | " + " | ".join(cells) + " |")


def timed_forward(name: str, archs: dict, px: int) -> dict:
    """In this (fresh) process: weights materialised on the CPU, one warm-up and one timed forward at `px`."""
    family, cls_name, config, widths = archs[name]
    px = native_px(family, config) or px
    start = time.perf_counter()
    net = build(cls_name, config, "meta").to_empty(device="cpu")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.normal_(0.0, 0.02, generator=g)
    model = RandomConditioned(family, net, widths).eval()
    built = time.perf_counter() - start
    x, t, c = one_input(model, px, "cpu")
    with torch.inference_mode():
        model.predict_noise(x, t, c)
        start = time.perf_counter()
        model.predict_noise(x, t, c)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"px": px, "seconds": seconds, "build": built, "peak_gib": peak, "threads": torch.get_num_threads()}


def time_table(archs: dict, px: int, max_gb: float, *, tiny: bool = False) -> None:
    print(f"\n## one forward on the CPU at {px} px (DiT at its sample size), fresh process each, random fp32 weights\n")
    print("| architecture | forward s | build s | peak RSS GiB | threads |\n|---|---|---|---|---|")
    for name, (_family, cls_name, config, _) in archs.items():
        n = sum(p.numel() for p in build(cls_name, config).parameters())
        if 4 * n / 1e9 > max_gb:
            print(f"| {name} | skipped: {4 * n / 1e9:.1f} GB of fp32 weights > --max-gb {max_gb:g} | | | |")
            continue
        cmd = [sys.executable, __file__, "--_child", name, "--px", str(px)] + (["--tiny"] if tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            print(
                f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} | | | |"
            )
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['seconds']:.2f} | {r['build']:.1f} | {r['peak_gib']:.2f} | {r['threads']} |")


def score_table(archs: dict, args, device: torch.device) -> None:
    from gcmodels.mining.typicality import TypicalityEstimator

    peak, gpu = gpu_peak(device, args.peak_tflops)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"\n## scoring on {gpu} ({device}, denoiser in {dtype}; TypicalityEstimator, both branches per batch)\n")
    print(
        "| architecture | px | N | batch | images/s | TFLOP/s | share of peak | peak GPU GiB |\n|---|---|---|---|---|---|---|---|"
    )
    for name, (family, cls_name, config, widths) in archs.items():
        if args.base:
            from gcmodels.diffusion import load_base

            model = load_base(args.base, ["label a", "label b"]).to(device)
            model.half_precision(dtype)
            family = model.family
        else:
            net = build(cls_name, config, "meta").to_empty(device=device)
            with torch.no_grad():
                for t in [*net.parameters(), *net.buffers()]:
                    if t.is_floating_point():
                        t.normal_(0.0, 0.02)
            model = RandomConditioned(family, net.to(dtype), widths).to(device).eval()
        px = native_px(family, config) or args.px
        flops = flops_at(model, px, device)
        g = torch.Generator().manual_seed(0)
        c_in = model.latent_channels
        latents = torch.randn((args.images, c_in, px // 8, px // 8), generator=g).to(device)
        cond = (torch.arange(args.images) % 2 + 1).to(device)
        for n in args.draws:
            est = TypicalityEstimator(draws=n, batch_size=args.batch)
            est.maps(model, latents[:1], cond[:1])  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            est.maps(model, latents, cond)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ips = args.images / (time.perf_counter() - start)
            tflops = ips * 2 * n * flops / 1e12
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            share = f"{tflops / peak:.1%}" if peak else "n/a"
            print(
                f"| {name if not args.base else args.base} | {px} | {n} | {args.batch} | {ips:.2f} | {tflops:.1f} | {share} | {mem:.1f} |"
            )
        del model
        if args.base:
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", action="store_true", help="time one CPU forward per architecture (fresh process each)")
    ap.add_argument("--score", action="store_true", help="scoring throughput (meant for a GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--px", type=int, default=256, help="image side of the timed forward and of scoring")
    ap.add_argument(
        "--max-gb", type=float, default=11.0, help="skip timing architectures with more fp32 weights than this"
    )
    ap.add_argument("--draws", type=int, nargs="+", default=[16, 100])
    ap.add_argument("--batch", type=int, default=128, help="score.batch_size")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--only", nargs="+", help="architectures to run (names as in the table)")
    ap.add_argument("--time-only", nargs="+", help="of those, the architectures to time (default: all)")
    ap.add_argument("--base", help="a local checkpoint directory of any family (with --score)")
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (smoke test)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    archs = TINY if args.tiny else ARCHITECTURES
    if args.only:
        archs = {k: v for k, v in archs.items() if k in args.only}
    if args._child:
        print(json.dumps(timed_forward(args._child, archs, args.px)))
        return
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    meta_table(archs)
    if args.time:
        timed = {k: v for k, v in archs.items() if not args.time_only or k in args.time_only}
        time_table(timed, args.px, args.max_gb, tiny=args.tiny)
    if args.score:
        from gcmodels.runtime import resolve_device

        score_table(archs, args, resolve_device(args.device))


if __name__ == "__main__":
    main()
