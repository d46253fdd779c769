"""The finetune task (outside a flow, via `.fn`) killed after its first checkpoint and run again
resumes from it and publishes the model an uninterrupted run publishes; the checkpoint is
deleted once the model is published, and a checkpoint of other settings is not resumed."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import gcmine.tasks.finetune as finetune_module
from gcmine.tasks.finetune import finetune
from gcmine.tasks.infra.checkpoints import CHECKPOINT, read_checkpoint, write_checkpoint
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images
from gcmodels.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig

MODEL = ModelConfig(block_out_channels=(8, 16), layers_per_block=1, num_train_timesteps=50, latent_factor=1)
TRAIN = TrainConfig(steps=6, checkpoint_every=3, batch_size=4, warmup_steps=1, ema_decay=0.9, seed=4)
LATENT = MODEL.model_copy(update={"latent_factor": 2, "latent_channels": 3, "autoencoder_width": 8})
LATENT_TRAIN = TRAIN.model_copy(update={"autoencoder_steps": 4, "autoencoder_crop": None})
RUNTIME = RuntimeConfig(device="cpu", progress=False, threads=1, gpu_limit=None)


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB").save(root / label / f"{i}.png")
    return root


def _ingest(images, out) -> list[str]:
    summary = ingest_images(str(images), None, RunStore(str(out)), DataConfig(resolution=8, shard_size=4), logger=None)
    return [s["name"] for s in summary["shards"]]


def _finetune(out, shards, train: TrainConfig = TRAIN, model: ModelConfig = MODEL) -> dict:
    return finetune.fn(str(out), shards, 8, model, train, RUNTIME)


def _kill_after_first_checkpoint(monkeypatch) -> list[int]:
    saved: list[int] = []
    original = finetune_module.train_diffusion

    def killed_after_checkpoint(*args, on_checkpoint, **kwargs):
        def save_then_die(state: dict) -> None:
            on_checkpoint(state)
            saved.append(state["step"])
            raise Killed

        return original(*args, on_checkpoint=save_then_die, **kwargs)

    monkeypatch.setattr(finetune_module, "train_diffusion", killed_after_checkpoint)
    return saved


def test_interrupted_finetune_resumes_to_the_uninterrupted_model(images, tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gcmine")
    ref_out = tmp_path / "reference"
    ref = _finetune(ref_out, _ingest(images, ref_out))
    assert ref["steps"] == 6 and not ref["reused"]
    assert not RunStore(str(ref_out)).exists(CHECKPOINT)
    assert not (ref_out / "checkpoints").exists()

    out = tmp_path / "run"
    shards = _ingest(images, out)
    store = RunStore(str(out))
    with monkeypatch.context() as m:
        saved = _kill_after_first_checkpoint(m)
        with pytest.raises(Killed):
            _finetune(out, shards)
    assert saved == [3]
    payload = read_checkpoint(store)
    assert payload is not None and payload["state"]["step"] == 3 and len(payload["state"]["history"]) == 3
    assert not store.exists("model/_COMPLETE") and not store.exists("model")

    caplog.clear()
    resumed_from: list[int] = []
    original = finetune_module.train_diffusion

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        resumed_from.append(result.resumed_from)
        return result

    monkeypatch.setattr(finetune_module, "train_diffusion", recording)
    again = _finetune(out, shards)
    assert "resuming from step 3" in caplog.text and resumed_from == [3]  # 3 steps trained, not 6
    assert again["fingerprint"] == ref["fingerprint"] and again["steps"] == 6 and not again["reused"]
    assert not store.exists(CHECKPOINT)
    history = store.read_parquet("training.parquet")
    ref_history = RunStore(str(ref_out)).read_parquet("training.parquet")
    assert list(history["step"]) == list(range(6))
    pd.testing.assert_series_equal(history["loss"], ref_history["loss"])


@pytest.mark.parametrize(("model", "train"), [(MODEL, TRAIN), (LATENT, LATENT_TRAIN)], ids=["pixel", "latent"])
def test_checkpoint_of_other_settings_is_not_resumed(images, tmp_path, monkeypatch, caplog, model, train) -> None:
    caplog.set_level(logging.INFO, logger="gcmine")
    out = tmp_path / "run"
    shards = _ingest(images, out)
    with monkeypatch.context() as m:
        _kill_after_first_checkpoint(m)
        with pytest.raises(Killed):
            _finetune(out, shards, train, model)
    other = train.model_copy(update={"lr": 1e-3})
    caplog.clear()
    got = _finetune(out, shards, other, model)
    assert "resuming" not in caplog.text and "ignoring the checkpoint of another training" in caplog.text
    assert "autoencoder of the interrupted training is reused" not in caplog.text
    assert not RunStore(str(out)).exists(CHECKPOINT)
    fresh_out = tmp_path / "fresh"
    assert got["fingerprint"] == _finetune(fresh_out, _ingest(images, fresh_out), other, model)["fingerprint"]


def test_checkpoint_the_trainer_refuses_is_dropped_for_a_fresh_start(images, tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gcmine")
    out = tmp_path / "run"
    shards = _ingest(images, out)
    store = RunStore(str(out))
    with monkeypatch.context() as m:
        _kill_after_first_checkpoint(m)
        with pytest.raises(Killed):
            _finetune(out, shards)
    payload = read_checkpoint(store)
    payload["state"]["signature"]["precision"] = "bf16"  # as if written on a GPU
    write_checkpoint(store, payload)
    caplog.clear()
    got = _finetune(out, shards)
    assert (
        "resuming from step 3" in caplog.text
        and "not resuming" in caplog.text
        and "'bf16' in the checkpoint" in caplog.text
    )
    assert not store.exists(CHECKPOINT)
    ref_out = tmp_path / "reference"
    assert got["fingerprint"] == _finetune(ref_out, _ingest(images, ref_out))["fingerprint"]


@pytest.mark.parametrize("killed", ["after the autoencoder", "after the first checkpoint"])
def test_interrupted_latent_finetune_reuses_its_autoencoder(images, tmp_path, monkeypatch, caplog, killed) -> None:
    """model.latent_factor: the collection autoencoder is trained first and saved in the checkpoint
    at once; a finetune killed after it (before or after the UNet's first checkpoint) does not train
    it again and publishes the model of an uninterrupted run (autoencoder included)."""
    caplog.set_level(logging.INFO, logger="gcmine")
    ref_out = tmp_path / "reference"
    ref = finetune.fn(str(ref_out), _ingest(images, ref_out), 8, LATENT, LATENT_TRAIN, RUNTIME)
    assert ref["autoencoder"]["steps"] == 4 and ref["autoencoder"]["crop"] == 8 and not ref["autoencoder"]["reused"]
    assert (ref_out / "model" / "autoencoder" / "model.safetensors").is_file()

    out = tmp_path / "run"
    shards = _ingest(images, out)
    with monkeypatch.context() as m:
        if killed == "after the autoencoder":

            def die(*args, **kwargs):
                raise Killed

            m.setattr(finetune_module, "train_diffusion", die)
        else:
            _kill_after_first_checkpoint(m)
        with pytest.raises(Killed):
            finetune.fn(str(out), shards, 8, LATENT, LATENT_TRAIN, RUNTIME)
    payload = read_checkpoint(RunStore(str(out)))
    assert payload is not None and "autoencoder" in payload
    assert (payload["state"] is None) == (killed == "after the autoencoder")
    trained: list[int] = []
    original = finetune_module.train_collection_autoencoder
    monkeypatch.setattr(
        finetune_module, "train_collection_autoencoder", lambda *a, **k: trained.append(1) or original(*a, **k)
    )
    caplog.clear()
    again = finetune.fn(str(out), shards, 8, LATENT, LATENT_TRAIN, RUNTIME)
    assert trained == [] and again["autoencoder"]["reused"]
    assert "collection autoencoder of the interrupted training is reused" in caplog.text
    assert ("resuming from step 3" in caplog.text) == (killed == "after the first checkpoint")
    assert again["fingerprint"] == ref["fingerprint"]
    assert not RunStore(str(out)).exists(CHECKPOINT)


def test_pixel_model_settings_key_as_before_the_autoencoder_settings() -> None:
    """The collection autoencoder's settings key a latent model only: a pixel-space model of a run
    root made before they existed is reused, not retrained (the key of the default settings below
    is the one the code before them computed for the then-default pixel model)."""
    from gcmodels.config import Settings

    s = Settings(model={"latent_factor": 1}, data={"resolution": 32})  # the pixel defaults before RESULTS.md 12j
    key = finetune_module._config_key(32, s.model, s.train, [np.zeros((32, 32, 3), np.uint8)], True, 0.0, 0, None)
    assert key == "5d28ac216f206808"
    # a settings file with data.resolution 32 (the former default) keeps that model, and its run roots their model
    assert Settings(data={"resolution": 32}).model == s.model
    other = s.train.model_copy(update={"autoencoder_steps": 10})
    assert finetune_module._config_key(32, s.model, other, [np.zeros((32, 32, 3), np.uint8)], True, 0.0, 0, None) == key
    latent = s.model.model_copy(update={"latent_factor": 2})
    keys = {
        finetune_module._config_key(64, latent, t, [np.zeros((64, 64, 3), np.uint8)], True, 0.0, 0, None)
        for t in (s.train, other)
    }
    assert len(keys) == 2
