"""The finetune task (via `.fn`) with `train.processes=2` on a tiny Stable Diffusion checkpoint,
on the CPU (two gloo processes): a run killed after its first checkpoint resumes in one process,
and a one-process run killed so resumes in two, both to the model of an uninterrupted one-process
run (within float summation order); the spawned process is ended with the killed run."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import gcmine.tasks.finetune as finetune_module
from gcmine.tasks.finetune import finetune
from gcmine.tasks.infra.checkpoints import CHECKPOINT
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images
from gcmine.tasks.latents import base_key, latents_shard
from gcmodels.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig

RUNTIME = RuntimeConfig(device="cpu", progress=False, threads=1, gpu_limit=None)
TRAIN = dict(steps=4, checkpoint_every=2, batch_size=4, warmup_steps=1, lr=1e-3, seed=4, gradient_checkpointing=False)


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / label / f"{i}.png")
    return root


def _finetune(images, out, base, processes: int) -> dict:
    store = RunStore(str(out))
    if not store.exists("manifest.parquet"):
        summary = ingest_images(str(images), None, store, DataConfig(resolution=32, shard_size=4), logger=None)
        out.joinpath("shards.txt").write_text("\n".join(s["name"] for s in summary["shards"]))
        latents = [
            latents_shard.fn(str(out), s, str(base), base_key(str(base)), RUNTIME)["latents"] for s in summary["shards"]
        ]
        out.joinpath("latents.txt").write_text("\n".join(latents))
    shards = out.joinpath("shards.txt").read_text().split("\n")
    latents = out.joinpath("latents.txt").read_text().split("\n")
    train = TrainConfig(**TRAIN, processes=processes)
    return finetune.fn(str(out), shards, 32, ModelConfig(base=str(base)), train, RUNTIME, latents=latents)


def _killed_after_first_checkpoint(monkeypatch) -> None:
    original = finetune_module.train_diffusion  # rank 0's (this process's); a spawned rank trains unpatched

    def killed_after_checkpoint(*args, on_checkpoint, **kwargs):
        def save_then_die(state: dict) -> None:
            on_checkpoint(state)
            raise Killed

        return original(*args, on_checkpoint=save_then_die, **kwargs)

    monkeypatch.setattr(finetune_module, "train_diffusion", killed_after_checkpoint)


def _unet(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_killed_finetune_resumes_in_another_number_of_processes(
    images, tmp_path, tiny_sd_dir, monkeypatch, caplog, first: int, then: int
) -> None:
    caplog.set_level(logging.INFO, logger="gcmine")
    ref_out = tmp_path / "reference"
    ref = _finetune(images, ref_out, tiny_sd_dir, 1)
    assert ref["steps"] == 4 and ref["processes"] == 1

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _killed_after_first_checkpoint(m)
        with pytest.raises(Killed):
            _finetune(images, out, tiny_sd_dir, first)
    assert not torch.distributed.is_initialized()
    assert RunStore(str(out)).exists(CHECKPOINT)

    caplog.clear()
    result = _finetune(images, out, tiny_sd_dir, then)
    assert "resuming from step 2" in caplog.text
    assert result["steps"] == 4 and result["processes"] == then
    a, b = _unet(ref_out), _unet(out)
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed  # half of the training ran in another number of processes: the same up to float rounding
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    ref_loss = pd.read_parquet(ref_out / "training.parquet")["loss"].to_numpy()
    loss = pd.read_parquet(out / "training.parquet")["loss"].to_numpy()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert not RunStore(str(out)).exists(CHECKPOINT)


def test_latent_pixel_model_trains_alike_in_two_processes(images, tmp_path) -> None:
    """model.latent_factor: rank 0 trains the collection autoencoder and saves it in the checkpoint;
    the spawned rank reads it from there, so two processes train the UNet of one process on the
    same latents (the same autoencoder, the UNet up to float summation order)."""
    model = ModelConfig(
        block_out_channels=(8, 16), num_train_timesteps=50, latent_factor=2, latent_channels=3, autoencoder_width=8
    )
    unets, autoencoders = [], []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        store = RunStore(str(out))
        summary = ingest_images(str(images), None, store, DataConfig(resolution=16, shard_size=4), logger=None)
        train = TrainConfig(**TRAIN, autoencoder_steps=3, processes=processes)
        got = finetune.fn(str(out), [s["name"] for s in summary["shards"]], 16, model, train, RUNTIME)
        assert got["processes"] == processes and got["autoencoder"]["steps"] == 3
        unets.append(_unet(out))
        autoencoders.append(load_file(str(out / "model" / "autoencoder" / "model.safetensors")))
    assert all(torch.equal(autoencoders[0][k], autoencoders[1][k]) for k in autoencoders[0])
    for k in unets[0]:
        torch.testing.assert_close(unets[1][k], unets[0][k], atol=1e-5, rtol=1e-4, msg=k)
