"""Tests of seeded DDIM sampling from pure noise (gcmodels/diffusion/sampling.py)."""

from __future__ import annotations

import pytest
import torch
from stub_schedule import StubSchedule

from gcmodels.diffusion import PixelDiffusion
from gcmodels.diffusion.sampling import Sampler

C, H, W = 3, 8, 8


class OracleStub(StubSchedule):
    """An oracle for the clean image targets[c] of label c (0 = null)."""

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.targets = targets
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict_noise(self, x_t, t, cond):
        self.calls.append((t.clone(), cond.clone()))
        abar = self._abar(t)
        return (x_t - abar.sqrt() * self.targets[cond]) / (1.0 - abar).sqrt()


class SmoothStub(StubSchedule):
    def predict_noise(self, x_t, t, cond):
        return torch.tanh(x_t * (1.0 + 0.3 * cond.float()).view(-1, 1, 1, 1)) * 0.8


def _targets(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, C, H, W, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def test_timesteps_descend_from_the_last_and_are_distinct() -> None:
    assert Sampler(steps=4).timesteps(1000) == [999, 749, 500, 250]
    assert Sampler(steps=1).timesteps(1000) == [999]
    assert Sampler(steps=5000).timesteps(10) == list(range(9, 0, -1))  # never more steps than the schedule has


def test_an_oracle_model_is_sampled_exactly_label_by_label() -> None:
    targets = _targets(3, seed=1)
    stub = OracleStub(targets)
    out = Sampler(steps=10, clip=None).sample(stub, torch.tensor([2, 1]), 3, (C, H, W))
    assert out.shape == (6, C, H, W) and out.dtype == torch.float32
    assert torch.allclose(out[:3], targets[2].expand(3, C, H, W), atol=1e-4)
    assert torch.allclose(out[3:], targets[1].expand(3, C, H, W), atol=1e-4)
    assert len(stub.calls) == 10 and all(c.tolist() == [2, 2, 2, 1, 1, 1] for _, c in stub.calls)


def test_guidance_extrapolates_and_clip_bounds() -> None:
    targets = _targets(2, seed=2) * 0.5
    stub = OracleStub(targets)
    out = Sampler(steps=8, guidance=2.0, clip=None).sample(stub, torch.tensor([1]), 2, (C, H, W))
    assert torch.allclose(out, (targets[0] + 2.0 * (targets[1] - targets[0])).expand(2, C, H, W), atol=1e-4)
    assert all(c.tolist() == [1, 1, 0, 0] for _, c in stub.calls)
    clipped = Sampler(steps=8, guidance=3.0, clip=0.25).sample(stub, torch.tensor([1]), 2, (C, H, W))
    assert clipped.abs().max() <= 0.25 + 1e-6


def test_seeded_common_noise_and_independent_of_the_batch() -> None:
    stub = SmoothStub()
    s = Sampler(steps=6, seed=3, batch_size=2)
    a = s.sample(stub, torch.tensor([1, 2]), 3, (C, H, W))
    assert torch.equal(a, s.sample(stub, torch.tensor([1, 2]), 3, (C, H, W)))
    assert torch.equal(a, Sampler(steps=6, seed=3, batch_size=64).sample(stub, torch.tensor([1, 2]), 3, (C, H, W)))
    assert torch.equal(
        a[3:], s.sample(stub, torch.tensor([2]), 3, (C, H, W))
    )  # a label's samples do not depend on the others
    assert torch.equal(a[:2], s.sample(stub, torch.tensor([1]), 2, (C, H, W)))  # sample i is the same for any count
    assert not torch.allclose(a, Sampler(steps=6, seed=4).sample(stub, torch.tensor([1, 2]), 3, (C, H, W)))
    assert not torch.allclose(a[:3], a[3:])  # the label matters


def test_a_real_pixel_model_samples_in_range() -> None:
    torch.manual_seed(0)
    model = PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
    ).eval()
    out = Sampler(steps=3).sample(model, model.label_index(["a", "b"]), 2, (3, 8, 8))
    assert out.shape == (4, 3, 8, 8) and out.abs().max() <= 1.0 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps"),
        ({"guidance": -1.0}, "guidance"),
        ({"clip": 0.0}, "clip"),
        ({"batch_size": 1}, "batch_size"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sampler(**kwargs)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="null label"):
        Sampler().sample(SmoothStub(), torch.tensor([0, 1]), 2, (C, H, W))
    with pytest.raises(ValueError, match="per_label"):
        Sampler().sample(SmoothStub(), torch.tensor([1]), 0, (C, H, W))
