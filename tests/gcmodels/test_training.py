"""Tests of diffusion training: smoke runs, determinism, the NaN guard, the time cap, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from gcmodels.diffusion import PixelDiffusion
from gcmodels.training import TrainingDiverged, TrainResult, _lr_factor, train_diffusion


def _tiny(seed: int = 0) -> PixelDiffusion:
    return PixelDiffusion.create(
        ["a", "b"], resolution=8, block_out_channels=(8, 16), layers_per_block=1,
        num_train_timesteps=100, beta_schedule="linear", generator=torch.Generator().manual_seed(seed),
    )


def _data(n: int = 8):
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    cond = torch.tensor([1, 2] * (n // 2) + [1] * (n % 2))
    return images, cond


def _train(model, images, cond, steps, seed=0, **kw) -> TrainResult:
    args = dict(
        steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, weight_decay=1e-2, grad_clip=1.0,
        label_dropout=0.2, checkpoint_every=5, generator=torch.Generator().manual_seed(seed),
    )
    args.update(kw)
    return train_diffusion(model, images, cond, **args)


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("steps", [2, 10])
def test_training_smoke(steps: int) -> None:
    model = _tiny()
    before = _snapshot(model)
    images, cond = _data()
    rows: list[dict] = []
    result = _train(model, images, cond, steps, callback=rows.append)
    assert result.steps == steps and result.stopped == "budget"
    assert len(result.history) == steps and rows == result.history
    for i, row in enumerate(result.history):
        assert set(row) == {"step", "loss", "lr", "seconds"}
        assert row["step"] == i
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert row["lr"] > 0 and row["seconds"] >= 0
    seconds = [r["seconds"] for r in result.history]
    assert seconds == sorted(seconds)
    assert not _same(before, _snapshot(model))
    assert not model.training  # left in eval mode


def test_lr_schedule_warmup_then_cosine() -> None:
    model = _tiny()
    images, cond = _data()
    result = _train(model, images, cond, 10, lr=1e-3, warmup_steps=2)
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lrs[-1] >= 0.1e-3 - 1e-12
    assert _lr_factor(0, 0, 10) == pytest.approx(1.0)
    assert _lr_factor(10, 0, 10) == pytest.approx(0.1)
    assert _lr_factor(50, 0, 10) == pytest.approx(0.1)


def test_training_is_deterministic() -> None:
    images, cond = _data()
    a, b = _tiny(), _tiny()
    ra = _train(a, images, cond, 5, seed=7)
    rb = _train(b, images, cond, 5, seed=7)
    assert _same(_snapshot(a), _snapshot(b))
    assert [r["loss"] for r in ra.history] == [r["loss"] for r in rb.history]
    c = _tiny()
    _train(c, images, cond, 5, seed=8)
    assert not _same(_snapshot(a), _snapshot(c))


def test_nan_guard_restores_last_checkpoint(monkeypatch) -> None:
    model = _tiny()
    images, cond = _data()
    original = model.training_loss
    calls = {"n": 0}

    def poisoned(x0, c, generator=None):
        loss = original(x0, c, generator=generator)
        step = calls["n"]
        calls["n"] += 1
        return loss * float("nan") if step >= 7 else loss

    monkeypatch.setattr(model, "training_loss", poisoned)
    snapshots: dict[int, dict] = {}

    def record(row: dict) -> None:
        snapshots[row["step"]] = _snapshot(model)

    with pytest.raises(TrainingDiverged) as err:
        _train(model, images, cond, 10, checkpoint_every=5, callback=record)
    assert err.value.step == 7
    assert err.value.good_step == 5
    assert math.isnan(err.value.loss)
    assert "step 7" in str(err.value) and "step 5" in str(err.value)
    assert sorted(snapshots) == list(range(7))
    # weights after 5 optimizer steps (step index 4), not the ones of step 6
    assert _same(_snapshot(model), snapshots[4])
    assert not _same(_snapshot(model), snapshots[6])
    assert not model.training


def test_nan_guard_before_first_checkpoint_restores_initial_weights(monkeypatch) -> None:
    model = _tiny()
    initial = _snapshot(model)
    images, cond = _data()
    original = model.training_loss
    calls = {"n": 0}

    def poisoned(x0, c, generator=None):
        loss = original(x0, c, generator=generator)
        calls["n"] += 1
        return loss + float("inf") if calls["n"] > 2 else loss

    monkeypatch.setattr(model, "training_loss", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        _train(model, images, cond, 10, checkpoint_every=5)
    assert (err.value.step, err.value.good_step) == (2, 0)
    assert _same(_snapshot(model), initial)


def test_max_seconds_zero_stops_after_first_step() -> None:
    model = _tiny()
    images, cond = _data()
    result = _train(model, images, cond, 10, max_seconds=0)
    assert result.stopped == "time"
    assert result.steps == 1 and len(result.history) == 1


def test_batch_larger_than_dataset() -> None:
    model = _tiny()
    images, cond = _data(3)
    result = _train(model, images, cond, 3, batch_size=16)
    assert result.steps == 3 and all(math.isfinite(r["loss"]) for r in result.history)


def test_bad_inputs_raise_value_error() -> None:
    model = _tiny()
    images, cond = _data()
    with pytest.raises(ValueError, match="no images"):
        _train(model, images[:0], cond[:0], 2)
    with pytest.raises(ValueError, match="uint8"):
        _train(model, images.float(), cond, 2)
    with pytest.raises(ValueError, match="uint8"):
        _train(model, images[:, 0], cond, 2)
    with pytest.raises(ValueError, match=r"cond must be \(8,\)"):
        _train(model, images, cond[:5], 2)
    with pytest.raises(ValueError, match=r"cond must be \(8,\)"):
        _train(model, images, cond[:, None], 2)
