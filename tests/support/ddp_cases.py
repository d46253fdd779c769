"""Data-parallel training cases for the tests: a tiny pixel model, its data, and the function the
spawned ranks of `gcmine.tasks.infra.distributed.process_group` run (importable by name, as the
spawned processes need)."""

from __future__ import annotations

import torch
from tiny_pixel import tiny_pixel

from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import train_diffusion


def tiny_model() -> PixelDiffusion:
    return tiny_pixel(resolution=8)


def case(kind: str):
    """(images, cond, trainer settings) of a case: "uint8" (one tensor of 8 images, batches of 4)
    or "buckets" (float inputs in three shapes, one of a single image: that batch leaves the second
    of two processes an empty slice), both with an EMA."""
    g = torch.Generator().manual_seed(5)
    settings = dict(
        lr=1e-3,
        warmup_steps=1,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.3,
        checkpoint_every=2,
        batch_size=4,
        ema_decay=0.9,
    )
    if kind == "uint8":
        images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g)
        return images, torch.tensor([1, 2] * 4), settings
    images = [
        torch.randn(8, 3, 8, 8, generator=g),
        torch.randn(5, 3, 8, 16, generator=g),
        torch.randn(1, 3, 16, 8, generator=g),
    ]
    cond = [torch.tensor([1, 2] * 4), torch.tensor([2, 0, 1, 2, 1]), torch.tensor([2])]
    return images, cond, settings


def train(kind: str, steps: int, *, group=None, resume: dict | None = None, **kw):
    """(model, result) of `steps` steps of the case `kind` (seed 3) in this process, with `group`."""
    images, cond, settings = case(kind)
    model = tiny_model()
    result = train_diffusion(
        model,
        images,
        cond,
        steps=steps,
        generator=torch.Generator().manual_seed(3),
        resume=resume,
        group=group,
        **settings,
        **kw,
    )
    return model, result


def rank_trains(group, device, jobs: list[tuple[str, int, str | None, str | None]]) -> None:
    """A spawned rank: the trainings `jobs` (kind, steps, path of a state to resume, path to save
    the final weights and history at, for the test to check they are rank 0's), in the order rank 0
    runs them."""
    torch.set_num_threads(1)
    for kind, steps, resume_path, out_path in jobs:
        resume = None if resume_path is None else torch.load(resume_path, weights_only=True)
        model, result = train(kind, steps, group=group, resume=resume)
        if out_path is not None:
            torch.save({"weights": model.state_dict(), "history": result.history}, out_path)
