"""Seconds per fine-tuning step in 1 and P data-parallel processes (`train.processes`, issue 20).

The small pixel UNet of FINDINGS.md (block_out_channels 32, 64, 64, 1 layer per block, 1.05 M
parameters) at 32 x 32, global batch 32, trained `--steps` steps (after `--warmup` untimed ones)
in one process, then in P processes (gloo on the CPU, one thread each; nccl with one GPU each on
`--device cuda`): each process forwards and backwards 32 / P images of every batch and the
gradients are summed over the processes. Prints the seconds per step of each and the largest
difference of the loss histories (the same training up to float summation order).

    .venv/bin/python benchmarks/data_parallel.py [--processes 2] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from gcmine.tasks.infra.distributed import process_group
from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion


def _run(device: torch.device, steps: int, warmup: int, batch: int, group=None) -> tuple[float, list[float]]:
    """(seconds per timed step, loss history) of `warmup + steps` steps on `device`."""
    torch.set_num_threads(1)
    model = PixelDiffusion.create(
        ["a", "b"],
        resolution=32,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        num_train_timesteps=1000,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    ).to(device)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    cond = torch.randint(1, 3, (256,), generator=g)
    marks: list[float] = []
    result = train_diffusion(
        model,
        images,
        cond,
        steps=warmup + steps,
        batch_size=batch,
        lr=2e-3,
        warmup_steps=10,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.15,
        checkpoint_every=10_000,
        generator=torch.Generator().manual_seed(2),
        callback=lambda row: marks.append(time.perf_counter()),
        group=group,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (marks[-1] - marks[warmup - 1]) / steps, [r["loss"] for r in result.history]


def _rank(group, device, steps: int, warmup: int, batch: int) -> None:
    _run(device, steps, warmup, batch, group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base = torch.device(args.device)
    devices = (
        [torch.device("cuda", i) for i in range(args.processes)] if base.type == "cuda" else [base] * args.processes
    )
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} device={args.device} batch={args.batch}")
    one, loss_one = _run(devices[0], args.steps, args.warmup, args.batch)
    print(f"1 process : {one:.3f} s/step")
    with process_group(devices, _rank, (args.steps, args.warmup, args.batch)) as group:
        many, loss_many = _run(devices[0], args.steps, args.warmup, args.batch, group)
    print(f"{args.processes} processes: {many:.3f} s/step ({one / many:.2f}x)")
    print(f"largest loss difference: {max(abs(a - b) for a, b in zip(loss_one, loss_many)):.2e}")
    print(f"load after={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
