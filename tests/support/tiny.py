"""The tiny settings of the flow tests: a whole run (every stage) on 16 px images in seconds.

The UNet denoises pixels here (model.latent_factor=1): the default latent model's autoencoder has its
own flow tests (tests/flows/test_mixed_shapes.py, tests/flows/test_s3.py, tests/tasks/test_finetune_resume.py).

`tiny_settings(*overrides)` returns ``--set`` style ``key=value`` strings: the shared base with
each override replacing the base's value of its key (or adding the key), `drop` removing keys."""

from __future__ import annotations

__all__ = ["TINY_BASE", "tiny_settings"]

TINY_BASE = (
    "data.resolution=16",
    "data.shard_size=4",
    "embed.size=8",
    "embed.dim=4",
    "cluster.k=2",
    "model.block_out_channels=[8, 16]",
    "model.latent_factor=1",
    "train.steps=3",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "score.draws=2",
    "score.batch_size=8",
    "rank.per_image=2",
    "rank.elements=2",
    "rank.feature_draws=1",
    "report.heatmaps_per_label=1",
    "runtime.progress=false",
)


def tiny_settings(*overrides: str, drop: tuple[str, ...] = ()) -> list[str]:
    """The base with `overrides` (``"key=value"``) applied, in the base's order, new keys last;
    the keys in `drop` left out (left to their defaults)."""
    merged = dict(item.split("=", 1) for item in TINY_BASE)
    for key in drop:
        del merged[key]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"a setting is key=value, got {item!r}")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]
