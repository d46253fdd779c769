"""Tests of translation across labels (SDEdit + deterministic DDIM) and of consistent changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from stub_schedule import StubSchedule

from gcmodels.mining.translation import (
    Translator,
    change_maps,
    consistent_changes,
    patch_crops,
    to_uint8,
)

C, H, W = 3, 8, 8


class OracleStub(StubSchedule):
    """Label c's model is an oracle for the clean image targets[c] (index 0 = null): it predicts
    the eps that x_t would have if its clean image were targets[c]."""

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.targets = targets  # (L + 1, C, H, W)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict_noise(self, x_t, t, cond):
        self.calls.append((t.clone(), cond.clone()))
        abar = self._abar(t)
        return (x_t - abar.sqrt() * self.targets[cond]) / (1.0 - abar).sqrt()


class SmoothStub(StubSchedule):
    def predict_noise(self, x_t, t, cond):
        scale = (1.0 + 0.3 * cond.float()).view(-1, 1, 1, 1)
        return torch.tanh(x_t * scale) * 0.8


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, C, H, W, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def test_strength_zero_returns_the_input_exactly() -> None:
    x = _images(3)
    out = Translator(strength=0.0).translate(SmoothStub(), x, torch.tensor([1, 2, 1]))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_uint8(images.float() / 127.5 - 1.0), images)


def test_deterministic_for_a_seed_and_independent_of_the_batch() -> None:
    x = _images(3, seed=1)
    target = torch.tensor([2, 1, 2])
    stub = SmoothStub()
    tr = Translator(strength=0.5, steps=10, seed=4, batch_size=2)
    a = tr.translate(stub, x, target)
    b = tr.translate(stub, x, target)
    assert torch.equal(a, b)
    c = Translator(strength=0.5, steps=10, seed=5).translate(stub, x, target)
    assert not torch.allclose(a, c)
    alone = tr.translate(stub, x[1:2], target[1:2])
    assert torch.equal(alone[0], a[1])  # same noise for every image: no dependence on the batch
    big = Translator(strength=0.5, steps=10, seed=4, batch_size=64).translate(stub, x, target)
    assert torch.equal(big, a)


@pytest.mark.parametrize("strength", [0.1, 0.5, 1.0])
def test_ddim_reaches_the_oracles_image(strength: float) -> None:
    # With a model that is an oracle for a clean image y, every DDIM step predicts x0_hat = y, so
    # the translation is y whatever the strength and the noise.
    targets = _images(3, seed=2)
    x = _images(2, seed=3)
    out = Translator(strength=strength, steps=20, clip=None).translate(OracleStub(targets), x, torch.tensor([1, 2]))
    assert torch.allclose(out, targets[[1, 2]], atol=1e-4)


def test_guidance_extrapolates_from_null_to_label_in_one_forward() -> None:
    # eps_hat = eps_null + w (eps_c - eps_null) is linear in the oracles' images, so the result
    # is z + w (y - z) for the null image z and the label image y.
    targets = _images(2, seed=4) * 0.5
    stub = OracleStub(targets)
    x = _images(2, seed=5)
    tr = Translator(strength=0.6, steps=10, guidance=2.0, clip=None)
    out = tr.translate(stub, x, torch.tensor([1, 1]))
    want = targets[0] + 2.0 * (targets[1] - targets[0])
    assert torch.allclose(out, want.expand_as(out), atol=1e-4)
    assert len(stub.calls) == len(tr.timesteps(1000))
    for t, cond in stub.calls:
        assert cond.tolist() == [1, 1, 0, 0] and torch.equal(t[:2], t[2:])
    clipped = Translator(strength=0.6, steps=10, guidance=3.0, clip=0.25).translate(stub, x, torch.tensor([1, 1]))
    assert clipped.abs().max() <= 0.25 + 1e-6


def test_plain_conditional_uses_one_input_per_image_and_the_expected_steps() -> None:
    stub = OracleStub(_images(3, seed=6))
    tr = Translator(strength=0.5, steps=10)
    tr.translate(stub, _images(2, seed=7), torch.tensor([2, 1]))
    taus = tr.timesteps(1000)
    assert taus[0] == round(0.5 * 999) and len(taus) == 5 and taus == sorted(taus, reverse=True)
    assert [int(t[0]) for t, _ in stub.calls] == taus
    assert all(cond.tolist() == [2, 1] for _, cond in stub.calls)
    full = Translator(strength=1.0, steps=50).timesteps(1000)
    assert full[0] == 999 and len(full) == 50 and full[-1] >= 0
    assert Translator(strength=0.0).timesteps(1000) == []
    assert Translator(strength=0.001, steps=50).timesteps(1000) == [1]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"strength": 1.5}, "1.5"),
        ({"strength": -0.1}, "-0.1"),
        ({"steps": 0}, "got 0"),
        ({"guidance": -1.0}, "-1.0"),
        ({"clip": 0.0}, "0.0"),
        ({"batch_size": 1}, "got 1"),
    ],
)
def test_bad_settings_name_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        Translator(**kwargs)
    assert needle in str(err.value)


def test_bad_inputs_are_rejected() -> None:
    tr = Translator(strength=0.3)
    with pytest.raises(ValueError, match="null label"):
        tr.translate(SmoothStub(), _images(2), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="target must be"):
        tr.translate(SmoothStub(), _images(2), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"x0 must be \(B, C, H, W\)"):
        tr.translate(SmoothStub(), _images(1)[0], torch.tensor([1]))


# ------------------------------------------------------------------ change maps and consistent changes
def test_change_maps_and_crops() -> None:
    src = torch.zeros(2, 3, 6, 6)
    dst = src.clone()
    dst[0, :, 1:3, 2:4] = 0.6
    dst[1, 0, 4, 4] = 0.9
    m = change_maps(src, dst)
    assert m.shape == (2, 6, 6)
    assert torch.allclose(m[0, 1:3, 2:4], torch.full((2, 2), 0.6)) and float(m[0].sum()) == pytest.approx(2.4)
    assert float(m[1, 4, 4]) == pytest.approx(0.3)
    img = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    boxes = torch.tensor([[[1, 2, 4, 5], [-1, -1, -1, -1]], [[0, 0, 3, 3], [3, 1, 6, 4]]])
    crops = patch_crops(img, boxes)
    assert crops.shape == (2, 2, 3, 3, 3)
    assert torch.equal(crops[0, 0], img[0, :, 2:5, 1:4])
    assert torch.equal(crops[1, 1], img[1, :, 1:4, 3:6])
    assert torch.equal(crops[0, 1], torch.zeros(3, 3, 3))


def test_consistent_changes_find_and_separate_two_kinds_of_change() -> None:
    # 12 images of noise; in 6 a red square becomes blue, in 6 a green square becomes yellow,
    # at random places. The most changed patch of every image is the square, and the two kinds
    # of change fall into two different clusters.
    g = torch.Generator().manual_seed(0)
    b, size, s = 12, 24, 6
    src = torch.rand(b, 3, size, size, generator=g) * 0.2 - 0.1
    dst = src.clone()
    pos = torch.randint(0, size - s + 1, (b, 2), generator=g)
    red, blue = torch.tensor([0.9, -0.9, -0.9]), torch.tensor([-0.9, -0.9, 0.9])
    green, yellow = torch.tensor([-0.9, 0.9, -0.9]), torch.tensor([0.9, 0.9, -0.9])
    kind = torch.arange(b) % 2
    for i in range(b):
        x, y = pos[i].tolist()
        before, after = (red, blue) if kind[i] == 0 else (green, yellow)
        src[i, :, y : y + s, x : x + s] = before[:, None, None]
        dst[i, :, y : y + s, x : x + s] = after[:, None, None]
    found = consistent_changes(src, dst, patch_size=s, per_image=1, clusters=2, seed=0)
    p = found.patches.sort_values("image")
    assert len(p) == b and (p["rank"] == 0).all()
    assert (p["x0"].to_numpy() == pos[:, 0].numpy()).all() and (p["y0"].to_numpy() == pos[:, 1].numpy()).all()
    assert (p["x1"] - p["x0"] == s).all()
    clusters = p["change_cluster"].to_numpy()
    assert len(set(clusters[kind.numpy() == 0])) == 1 and len(set(clusters[kind.numpy() == 1])) == 1
    assert clusters[0] != clusters[1]
    assert found.clusters["size"].tolist() == [6, 6]
    assert list(found.clusters.columns) == ["change_cluster", "score", "size"]
    assert np.all(np.diff(found.clusters["score"].to_numpy()) <= 0)


def test_consistent_changes_over_groups_of_shapes_number_images_in_order() -> None:
    """Images that keep their aspect ratio come in groups of one shape: the patches of all groups
    are clustered together, images numbered in list order; one group is the single-tensor call."""
    g = torch.Generator().manual_seed(1)
    a_src, b_src = torch.rand(3, 3, 16, 24, generator=g), torch.rand(2, 3, 24, 16, generator=g)
    a_dst, b_dst = a_src.clone(), b_src.clone()
    a_dst[:, :, 2:8, 3:9] += 1.0
    b_dst[:, :, 10:16, 4:10] -= 1.0
    one = consistent_changes([a_src], [a_dst], patch_size=6, clusters=2)
    ref = consistent_changes(a_src, a_dst, patch_size=6, clusters=2)
    pd.testing.assert_frame_equal(one.patches, ref.patches)
    both = consistent_changes([a_src, b_src], [a_dst, b_dst], patch_size=6, clusters=2)
    p = both.patches
    assert p["image"].tolist() == [0, 1, 2, 3, 4]
    assert (p.loc[p["image"] < 3, ["x0", "y0"]].to_numpy() == [3, 2]).all()
    assert (p.loc[p["image"] >= 3, ["x0", "y0"]].to_numpy() == [4, 10]).all()
    assert p.groupby(p["image"] < 3)["change_cluster"].nunique().tolist() == [1, 1]
    with pytest.raises(ValueError, match="paired groups"):
        consistent_changes([a_src, b_src], [a_dst], patch_size=6)


# ------------------------------------------------------------------ the ground-truth demo set
class LocalPatchPrior(StubSchedule):
    """A conditional denoiser fitted in closed form to images: the minimiser of the eps-prediction
    loss among models that see a 3 x 3 neighbourhood, for a bank of the label's training patches
    (index 0, the null label, = all images). E[x0 pixel | x_t patch, c] is the posterior mean of
    the bank's centre pixels, with weights softmax(-|x_t patch - sqrt(abar) bank patch|^2 / 2(1-abar)).
    It learns, without any training loop, what is label-specific in the demo set (the motif's
    colour and shape) and what is shared (the photographs, the distractor)."""

    P = 3

    def __init__(self, x0: torch.Tensor, cond: torch.Tensor, n_labels: int, bank: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.banks, self.centres = [], []
        for c in range(n_labels + 1):
            sel = torch.ones_like(cond, dtype=torch.bool) if c == 0 else cond == c
            patches = self._patches(x0[sel]).reshape(-1, 3 * self.P**2)
            idx = torch.randperm(patches.shape[0], generator=g)[:bank]
            self.banks.append(patches[idx])
            self.centres.append(patches[idx].view(-1, 3, self.P**2)[:, :, self.P**2 // 2])

    def _patches(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, HW, C P^2)
        r = self.P // 2
        return torch.nn.functional.unfold(torch.nn.functional.pad(x, (r, r, r, r), mode="replicate"), self.P).transpose(
            1, 2
        )

    def predict_noise(self, x_t, t, cond):
        abar = self._abar(t)
        b, c, h, w = x_t.shape
        q = self._patches(x_t)
        x0_hat = torch.empty(b, h * w, c)
        for i in range(b):
            a = abar[i, 0, 0, 0]
            bank = self.banks[int(cond[i])]
            logits = -torch.cdist(q[i], a.sqrt() * bank).pow(2) / (2 * (1 - a))
            x0_hat[i] = torch.softmax(logits, 1) @ self.centres[int(cond[i])]
        x0_hat = x0_hat.transpose(1, 2).reshape(b, c, h, w)
        return (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()


def test_translation_on_the_demo_set_replaces_the_motif_more_than_the_background() -> None:
    from gcmodels.data.synthetic import motif_dataset

    labels = ("circle", "cross", "triangle")
    data = motif_dataset(n_per_label=8, size=32, labels=labels, motif_frac=0.25, seed=0)
    x0 = (
        torch.from_numpy(np.stack([np.asarray(d.image) for d in data]).transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
    )
    own = torch.tensor([labels.index(d.label) + 1 for d in data])
    model = LocalPatchPrior(x0, own, len(labels), bank=1024, seed=0)
    inside = torch.zeros(len(data), 32, 32, dtype=torch.bool)
    for i, d in enumerate(data):
        bx0, by0, bx1, by1 = d.box
        inside[i, by0:by1, bx0:bx1] = True

    def change_in_out(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = change_maps(x0, out)
        return (m * inside).sum((1, 2)) / inside.sum((1, 2)), (m * ~inside).sum((1, 2)) / (~inside).sum((1, 2))

    tr = Translator(strength=0.3, steps=10, seed=0)
    other = own % len(labels) + 1
    translated = tr.translate(model, x0, other)
    inn, out = change_in_out(translated)
    # the motif box changes more than the background, in (nearly) every image, by a wide margin
    assert (inn > out).float().mean() >= 0.9, (inn, out)
    assert float((inn / out).median()) >= 1.5, inn / out
    # ... and more than when the same image is "translated" to its own label (the control)
    same_in, _ = change_in_out(tr.translate(model, x0, own))
    assert (inn > same_in).float().mean() >= 0.8, (inn, same_in)
    assert translated.min() >= -1 and translated.max() <= 1
