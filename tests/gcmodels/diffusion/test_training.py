"""Tests of diffusion training: smoke runs, determinism, the NaN guard, the time cap, bad input,
float and bucketed inputs, the lr schedules, EMA, precision checks, trainable subsets, and
checkpoint / resume giving bit-identical results."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.training import CheckpointMismatch, TrainingDiverged, TrainResult, _lr_factor, train_diffusion
from gcmodels.runtime import resolve_precision


def _tiny(seed: int = 0) -> PixelDiffusion:
    return PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(seed),
    )


def _data(n: int = 8):
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    cond = torch.tensor([1, 2] * (n // 2) + [1] * (n % 2))
    return images, cond


def _train(model, images, cond, steps, seed=0, **kw) -> TrainResult:
    args = dict(
        steps=steps,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.2,
        checkpoint_every=5,
        generator=torch.Generator().manual_seed(seed),
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
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
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
        _train(model, images.to(torch.int32), cond, 2)
    with pytest.raises(ValueError, match="uint8"):
        _train(model, images[:, 0], cond, 2)
    with pytest.raises(ValueError, match=r"cond must be \(8,\)"):
        _train(model, images, cond[:5], 2)
    with pytest.raises(ValueError, match=r"cond must be \(8,\)"):
        _train(model, images, cond[:, None], 2)


# ---------------------------------------------------------------------- float / bucketed inputs
def _float_buckets() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    images = [torch.randn(8, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 16, generator=g)]
    cond = [torch.tensor([1, 2] * 4), torch.tensor([2, 0, 1, 2])]
    return images, cond


def test_float_input_is_used_as_x0() -> None:
    images, cond = _data()
    a, b = _tiny(), _tiny()
    ra = _train(a, images, cond, 4)
    rb = _train(b, images.float().div(127.5).sub(1.0), cond, 4)  # what encode gives
    assert [r["loss"] for r in ra.history] == [r["loss"] for r in rb.history]
    assert _same(_snapshot(a), _snapshot(b))


def test_buckets_one_shape_per_batch_in_proportion_to_size(monkeypatch) -> None:
    model = _tiny()
    images, cond = _float_buckets()
    shapes: list[tuple] = []
    original = model.training_loss

    def recording(x0, c, generator=None):
        shapes.append(tuple(x0.shape))
        return original(x0, c, generator=generator)

    monkeypatch.setattr(model, "training_loss", recording)
    result = _train(model, images, cond, 12, batch_size=2)
    assert result.steps == 12 and all(math.isfinite(r["loss"]) for r in result.history)
    # an epoch plan is 4 batches of the 8-image bucket and 2 of the 4-image one, shuffled
    assert sorted(set(shapes)) == [(2, 3, 8, 8), (2, 3, 8, 16)]
    assert shapes.count((2, 3, 8, 8)) == 8 and shapes.count((2, 3, 8, 16)) == 4
    assert shapes[:6] != sorted(shapes[:6]) or shapes[6:] != sorted(shapes[6:])  # shuffled, not in bucket order
    # deterministic given the generator
    shapes_a = list(shapes)
    shapes.clear()
    model2 = _tiny()
    monkeypatch.setattr(model2, "training_loss", recording)
    _train(model2, images, cond, 12, batch_size=2)
    assert shapes == shapes_a


def test_bucket_input_errors() -> None:
    model = _tiny()
    images, cond = _float_buckets()
    with pytest.raises(ValueError, match="list of as many cond"):
        _train(model, images, cond[:1], 2)
    with pytest.raises(ValueError, match="list of as many cond"):
        _train(model, images, torch.cat(cond), 2)
    with pytest.raises(ValueError, match=r"cond \(bucket 1\) must be \(4,\), got \(3,\)"):
        _train(model, images, [cond[0], cond[1][:3]], 2)
    with pytest.raises(ValueError, match="mix kinds"):
        _train(model, [images[0], _data()[0]], [cond[0], _data()[1]], 2)
    with pytest.raises(ValueError, match="no images"):
        _train(model, [], [], 2)


# ---------------------------------------------------------------------- lr schedule, EMA, precision
def test_constant_schedule_without_warmup() -> None:
    model = _tiny()
    images, cond = _data()
    result = _train(model, images, cond, 5, lr=1e-3, warmup_steps=0, lr_schedule="constant")
    assert [r["lr"] for r in result.history] == [pytest.approx(1e-3)] * 5
    result = _train(_tiny(), images, cond, 5, lr=1e-3, warmup_steps=0)
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]
    assert _lr_factor(3, 2, 10, "constant") == 1.0 and _lr_factor(0, 2, 10, "constant") == 0.5
    with pytest.raises(ValueError, match="'linear'"):
        _train(_tiny(), images, cond, 2, lr_schedule="linear")


def test_ema_weights_are_loaded_at_the_end() -> None:
    images, cond = _data()
    raw = _tiny()
    _train(raw, images, cond, 6)
    zero = _tiny()  # decay 0: the shadow is the weights of the last step
    _train(zero, images, cond, 6, ema_decay=0.0)
    assert _same(_snapshot(raw), _snapshot(zero))

    model = _tiny()
    names = [n for n, _ in model.named_parameters()]
    shadow = {n: p.detach().clone() for n, p in model.named_parameters()}
    after: list[dict] = []
    result = _train(
        model,
        images,
        cond,
        6,
        ema_decay=0.9,
        callback=lambda row: after.append({n: p.detach().clone() for n, p in model.named_parameters()}),
    )
    for k, weights in enumerate(after, start=1):
        d = min(0.9, (1 + k) / (10 + k))
        shadow = {n: shadow[n] * d + weights[n] * (1 - d) for n in names}
    final = dict(model.named_parameters())
    for n in names:
        torch.testing.assert_close(final[n].detach(), shadow[n], rtol=1e-5, atol=1e-6)
    assert not torch.equal(final["unet.conv_out.weight"], after[-1]["unet.conv_out.weight"])
    assert [r["loss"] for r in result.history] == [r["loss"] for r in _train(_tiny(), images, cond, 6).history]
    with pytest.raises(ValueError, match="ema_decay must be in"):
        _train(_tiny(), images, cond, 2, ema_decay=1.0)


def test_unknown_precision_is_refused() -> None:
    images, cond = _data()
    with pytest.raises(ValueError, match="'fp8'"):
        _train(_tiny(), images, cond, 2, precision="fp8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(precision: str, tmp_path) -> None:
    """The autocast / GradScaler bookkeeping (CPU autocast stands in for CUDA here): weights and
    optimizer stay fp32, the loss is finite and falls, the fp16 scaler state is checkpointed, and
    an interrupted mixed-precision run resumes to the uninterrupted result."""
    images, cond = _data()
    kw = dict(precision=precision, checkpoint_every=2, warmup_steps=1)
    full = _tiny()
    states: list[dict] = []
    ref = _train(full, images, cond, 6, seed=3, on_checkpoint=states.append, **kw)
    assert all(p.dtype == torch.float32 for p in full.parameters())
    losses = [r["loss"] for r in ref.history]
    assert all(math.isfinite(v) for v in losses) and losses != [
        r["loss"] for r in _train(_tiny(), images, cond, 6, seed=3).history
    ]
    scaler = states[0]["scaler"]
    assert (scaler.get("scale") == 65536.0) if precision == "fp16" else not scaler
    resumed = _tiny()
    out = _train(resumed, images, cond, 6, seed=0, resume=states[1], **kw)
    assert out.resumed_from == 4 and [r["loss"] for r in out.history] == losses
    a, b = dict(full.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_precision_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"
    for setting in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f"runtime.precision='{setting}' needs a CUDA device"):
            resolve_precision(setting, cpu)
    with pytest.raises(ValueError, match="'half'"):
        resolve_precision("half", cpu)


class _HeadOnly(PixelDiffusion):
    """Only the output convolution is trained (like LoRA adapters of a frozen UNet)."""

    def trainable_parameters(self):
        return list(self.unet.conv_out.parameters())


def test_trainable_parameters_only_are_optimised() -> None:
    base = _tiny()
    model = _HeadOnly(base.unet, base.scheduler, base.labels)
    before = _snapshot(model)
    images, cond = _data()
    states: list[dict] = []
    _train(model, images, cond, 4, checkpoint_every=2, on_checkpoint=states.append)
    after = _snapshot(model)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["unet.conv_out.bias", "unet.conv_out.weight"]
    assert sorted(states[0]["weights"]) == changed


# ---------------------------------------------------------------------- checkpoint / resume
class _Stop(Exception):
    pass


def _resume_case(kind: str):
    if kind == "uint8":
        images, cond = _data()
        return images, cond, {}
    images, cond = _float_buckets()
    return images, cond, {"batch_size": 2}


@pytest.mark.parametrize("kind", ["uint8", "buckets"])
@pytest.mark.parametrize("ema", [None, 0.9])
def test_interrupted_and_resumed_equals_uninterrupted(kind: str, ema: float | None, tmp_path) -> None:
    images, cond, kw = _resume_case(kind)
    kw.update(ema_decay=ema, checkpoint_every=2, warmup_steps=1)
    full_states: list[dict] = []
    full = _tiny()
    ref = _train(full, images, cond, 8, seed=3, on_checkpoint=full_states.append, **kw)
    assert [s["step"] for s in full_states] == [2, 4, 6]  # none after the last step

    def stop_at_4(state: dict) -> None:
        if state["step"] == 4:
            torch.save(state, tmp_path / "ckpt.pt")
            raise _Stop

    first = _tiny()
    with pytest.raises(_Stop):
        _train(first, images, cond, 8, seed=3, on_checkpoint=stop_at_4, **kw)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["step"] == 4 and len(state["history"]) == 4 and (state["ema"] is None) == (ema is None)

    resumed = _tiny()  # a fresh object, built as for the first run
    rest_states: list[dict] = []
    rows: list[dict] = []
    out = _train(
        resumed, images, cond, 8, seed=99, on_checkpoint=rest_states.append, callback=rows.append, resume=state, **kw
    )  # the generator's seed is irrelevant: its state is restored
    assert out.resumed_from == 4 and out.steps == 8 and [r["step"] for r in rows] == [4, 5, 6, 7]
    assert [r["loss"] for r in out.history] == [r["loss"] for r in ref.history]
    assert [r["lr"] for r in out.history] == [r["lr"] for r in ref.history]
    a, b = dict(full.named_parameters()), dict(resumed.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the next checkpoint of the resumed run is that of the uninterrupted one
    assert [s["step"] for s in rest_states] == [6]
    assert all(
        torch.equal(rest_states[0]["weights"][k], full_states[2]["weights"][k]) for k in full_states[2]["weights"]
    )
    assert torch.equal(rest_states[0]["generator"], full_states[2]["generator"])


def test_resume_refuses_other_settings_and_leaves_the_model_alone() -> None:
    images, cond = _data()
    states: list[dict] = []
    _train(_tiny(), images, cond, 6, checkpoint_every=2, on_checkpoint=states.append)
    model = _tiny()
    before = _snapshot(model)
    g = torch.Generator().manual_seed(0)
    g_state = g.get_state()
    with pytest.raises(CheckpointMismatch, match=r"lr: 0.001 in the checkpoint, 0.002 now") as err:
        train_diffusion(
            model,
            images,
            cond,
            steps=6,
            batch_size=4,
            lr=2e-3,
            warmup_steps=2,
            weight_decay=1e-2,
            grad_clip=1.0,
            label_dropout=0.2,
            checkpoint_every=2,
            generator=g,
            resume=states[0],
        )
    assert isinstance(err.value, ValueError)
    assert _same(before, _snapshot(model)) and torch.equal(g.get_state(), g_state)
    with pytest.raises(CheckpointMismatch, match="buckets"):
        _train(model, images[:6], cond[:6], 6, checkpoint_every=2, resume=states[0])
    with pytest.raises(CheckpointMismatch, match="ema_decay"):
        _train(model, images, cond, 6, checkpoint_every=2, ema_decay=0.5, resume=states[0])


@pytest.mark.parametrize("bf16", [True, False])
def test_resolve_precision_auto_on_cuda(bf16: bool, monkeypatch) -> None:
    import contextlib

    asked: list = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: (asked.append(d), contextlib.nullcontext())[1])
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 and not including_emulation
    )
    cuda = torch.device("cuda:1")
    assert resolve_precision("auto", cuda) == ("bf16" if bf16 else "fp16") and asked == [cuda]
    assert resolve_precision("fp16", cuda) == "fp16" and resolve_precision("bf16", cuda) == "bf16"


def test_checkpoints_by_wall_time_and_a_resume_from_one() -> None:
    """checkpoint_seconds: 0 = after every step but the last; a huge value = never; the restore
    point stays by steps; a state written by time resumes to the uninterrupted run."""
    images, cond = _data()
    every: list[dict] = []
    ref_model = _tiny()
    ref = _train(ref_model, images, cond, 5, seed=3, checkpoint_seconds=0.0, on_checkpoint=every.append)
    assert [s["step"] for s in every] == [1, 2, 3, 4]
    assert all(s["host_seconds"] >= 0 for s in every)
    never: list[dict] = []
    _train(_tiny(), images, cond, 5, seed=3, checkpoint_seconds=1e9, on_checkpoint=never.append)
    assert never == []
    resumed = _tiny()
    out = _train(resumed, images, cond, 5, seed=3, checkpoint_seconds=1e9, resume=every[2])  # from step 3
    assert out.resumed_from == 3 and [r["loss"] for r in out.history] == [r["loss"] for r in ref.history]
    a, b = dict(ref_model.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        _train(_tiny(), images, cond, 2, checkpoint_seconds=-1.0)


def test_adamw_is_fused_on_cuda_only() -> None:
    """The fused AdamW kernel on CUDA; torch's default elsewhere (CPU runs unchanged bit for bit)."""
    from gcmodels.diffusion.training import _optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    cuda, _, _ = _optimizer(params, 1e-3, 0.0, 0, 10, "constant", torch.device("cuda"), "fp32")
    cpu, _, _ = _optimizer(params, 1e-3, 0.0, 0, 10, "constant", torch.device("cpu"), "fp32")
    assert cuda.param_groups[0]["fused"] is True
    assert cpu.param_groups[0]["fused"] is None and cpu.param_groups[0]["foreach"] is None


def test_checkpointing_rule_from_free_memory() -> None:
    """`checkpointing_needed`: gradients + AdamW's two moments (+ an EMA) + the batch's activations
    against 85 % of the free memory. With the sizes of an SD 1.5 UNet at 512 px (3.4 GB of fp32
    gradients, ~1 GiB of activations a sample): off on an 80 GB card, on on a 24 GB one, and
    a larger batch or an EMA can tip it."""
    from gcmodels.diffusion.training import checkpointing_needed

    gib = 2**30
    step = {"per_sample": 1 * gib, "fixed": 2 * gib, "grads": int(3.2 * gib)}
    off, need = checkpointing_needed(75 * gib, step, 8)
    assert not off and need == 2 * gib + 8 * gib + 3 * int(3.2 * gib)
    assert checkpointing_needed(20 * gib, step, 8)[0]  # a 24 GB card with the weights loaded
    assert not checkpointing_needed(30 * gib, step, 8)[0]
    assert checkpointing_needed(30 * gib, step, 16)[0]  # twice the batch
    assert checkpointing_needed(25 * gib, step, 8, ema=True)[0] and not checkpointing_needed(25 * gib, step, 8)[0]


def test_memory_probe_measures_nothing_off_cuda() -> None:
    from gcmodels.diffusion.training import probe_step_memory

    model = _tiny()
    images, cond = _data(2)
    assert probe_step_memory(model, images[:1], cond[:1], "fp32") is None
    assert all(p.grad is None for p in model.parameters())
