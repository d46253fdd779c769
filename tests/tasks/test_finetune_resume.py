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

MODEL = ModelConfig(block_out_channels=(8, 16), layers_per_block=1, num_train_timesteps=50)
TRAIN = TrainConfig(steps=6, checkpoint_every=3, batch_size=4, warmup_steps=1, ema_decay=0.9, seed=4)
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


def _finetune(out, shards, train: TrainConfig = TRAIN) -> dict:
    return finetune.fn(str(out), shards, 8, MODEL, train, RUNTIME)


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


def test_checkpoint_of_other_settings_is_not_resumed(images, tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gcmine")
    out = tmp_path / "run"
    shards = _ingest(images, out)
    with monkeypatch.context() as m:
        _kill_after_first_checkpoint(m)
        with pytest.raises(Killed):
            _finetune(out, shards)
    other = TRAIN.model_copy(update={"lr": 1e-3})
    caplog.clear()
    got = _finetune(out, shards, other)
    assert "resuming" not in caplog.text and "ignoring the checkpoint of another training" in caplog.text
    assert not RunStore(str(out)).exists(CHECKPOINT)
    fresh_out = tmp_path / "fresh"
    assert got["fingerprint"] == _finetune(fresh_out, _ingest(images, fresh_out), other)["fingerprint"]


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
