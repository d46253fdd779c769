"""Tests of cotypicality (every image under every label, shared draws) and typicality as a classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from stub_schedule import StubSchedule

from gcmodels.diffusion import PixelDiffusion
from gcmodels.mining.cotypicality import (
    classification_accuracy,
    confused_labels,
    confusion_matrix,
    cotypicality_frame,
    label_matrix,
    predict_labels,
    stratified_split,
)
from gcmodels.mining.typicality import TypicalityEstimator, label_contrast, rival_schedule

C, H, W = 3, 6, 7


class OneLabelStub(StubSchedule):
    """Knows x0 (shared by all images) and exactly one label: under `known` it recovers eps
    exactly; under the null label and every other label it predicts 0."""

    def __init__(self, x0: torch.Tensor, known: int) -> None:
        super().__init__()
        self.x0, self.known = x0, known

    def predict_noise(self, x_t, t, cond):
        abar = self._abar(t)
        eps = (x_t - abar.sqrt() * self.x0) / (1.0 - abar).sqrt()
        return torch.where((cond == self.known).view(-1, 1, 1, 1), eps, torch.zeros_like(eps))


class SmoothStub(StubSchedule):
    """Deterministic, elementwise in x_t, different for every label."""

    def predict_noise(self, x_t, t, cond):
        scale = (1.0 + 0.37 * cond.float()).view(-1, 1, 1, 1)
        tt = (t.float() / self.num_train_timesteps).view(-1, 1, 1, 1)
        return torch.tanh(x_t * scale) * (0.5 + tt) + 0.01 * cond.float().view(-1, 1, 1, 1)


class RecordingStub(SmoothStub):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def predict_noise(self, x_t, t, cond):
        self.calls.append((x_t.clone(), t.clone(), cond.clone()))
        return super().predict_noise(x_t, t, cond)


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, C, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ the stub that knows one label
@pytest.mark.parametrize("known", [1, 2, 3])
def test_stub_knowing_one_label_gives_the_expected_matrix(known: int) -> None:
    x0 = _images(1)[0]
    est = TypicalityEstimator(draws=6, batch_size=5, seed=2)
    labels = torch.tensor([1, 2, 3])
    images = x0.expand(4, C, H, W)
    maps = est.cotypicality_maps(OneLabelStub(x0, known), images, labels)
    assert maps.shape == (4, 3, H, W) and maps.dtype == torch.float32
    _, eps = est.sample_draws(1000, (C, H, W))
    expected_map = eps.pow(2).mean(dim=(0, 1))  # L(null) - L(known) = |eps|^2 - 0
    scores = maps.mean((-2, -1)).numpy()  # (B, L)
    for j, lab in enumerate(labels.tolist()):
        if lab == known:
            assert torch.allclose(maps[:, j], expected_map.expand(4, H, W), rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(maps[:, j], torch.zeros(4, H, W))
    names = ["a", "b", "c"]
    mat = label_matrix(scores, ["a", "b", "a", "c"], names)
    want = np.zeros((3, 3))
    want[:, known - 1] = float(expected_map.mean())
    assert np.allclose(mat.to_numpy(), want, rtol=1e-4, atol=1e-7)
    assert list(mat.index) == names and list(mat.columns) == names
    # as a classifier, the stub predicts the label it knows, for every image
    assert list(predict_labels(scores, names)) == [names[known - 1]] * 4


# ------------------------------------------------------------------ label contrast
def test_label_contrast_by_hand() -> None:
    values = torch.tensor([[1.0, 4.0, 7.0], [2.0, -2.0, 0.0]])  # (B=2, L=3)
    got = label_contrast(values, torch.tensor([1, 0]))
    assert torch.allclose(got, torch.tensor([4.0 - (1.0 + 7.0) / 2, 2.0 - (-2.0 + 0.0) / 2]))
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    own = torch.tensor([2, 0])
    for b in range(2):  # maps: per pixel, the own column minus the others' mean
        others = [j for j in range(3) if j != own[b]]
        assert torch.allclose(label_contrast(maps, own)[b], maps[b, own[b]] - maps[b, others].mean(0))
    same = torch.full((2, 3, 4), 5.0)  # every label alike: zero contrast, however large
    assert torch.equal(label_contrast(same, own), torch.zeros(2, 4))


def test_label_contrast_needs_two_labels_and_valid_columns() -> None:
    with pytest.raises(ValueError, match="at least 2 labels"):
        label_contrast(torch.ones(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="own must be"):
        label_contrast(torch.ones(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="own must be"):
        label_contrast(torch.ones(2, 3), torch.tensor([0]))


class NullSwapStub(SmoothStub):
    """SmoothStub whose null-label predictions are replaced by another function of x_t and t."""

    def predict_noise(self, x_t, t, cond):
        pred = super().predict_noise(x_t, t, cond)
        null = (cond == 0).view(-1, 1, 1, 1)
        return torch.where(null, torch.sin(3.0 * x_t) - 0.2, pred)


def test_the_null_branch_cancels_from_the_contrast() -> None:
    """What the null model predicts changes every typicality map, never the contrast: the
    contrast is mean_c' L(c') - L(c), measured on the same draws."""
    x = _images(4, seed=5)
    labels = torch.tensor([1, 2, 3])
    own = torch.tensor([0, 2, 1, 0])
    est = TypicalityEstimator(draws=6, batch_size=8, seed=3)
    plain, swapped = est.cotypicality_maps(SmoothStub(), x, labels), est.cotypicality_maps(NullSwapStub(), x, labels)
    assert not torch.allclose(plain, swapped, atol=1e-3)  # T depends on the null model
    assert torch.allclose(label_contrast(plain, own), label_contrast(swapped, own), atol=1e-5)
    # and the contrast is the mean over the other labels' losses minus the own label's
    t, eps = est.sample_draws(1000, (C, H, W))
    stub = SmoothStub()
    want = torch.zeros(4, H, W)
    for d in range(6):
        x_t = stub.add_noise(x, eps[d].expand_as(x), t[d].expand(4))
        loss = torch.stack(
            [(stub.predict_noise(x_t, t[d].expand(4), lab.expand(4)) - eps[d]).pow(2).mean(1) for lab in labels], 1
        )  # (B, L, H, W)
        mine = loss[torch.arange(4), own]
        want += (loss.sum(1) - mine) / 2 - mine
    assert torch.allclose(label_contrast(plain, own), want / 6, atol=1e-5)


@pytest.mark.parametrize(("n_labels", "draws"), [(2, 5), (4, 16), (4, 6), (5, 3), (7, 12)])
def test_rival_schedule_cycles_the_other_labels_and_weighs_them_alike(n_labels: int, draws: int) -> None:
    own = torch.tensor([1, n_labels, 2, 1])
    rivals, weights = rival_schedule(own, n_labels, draws, seed=4)
    assert rivals.shape == weights.shape == (4, draws)
    assert not bool((rivals == own[:, None]).any()) and bool(((rivals >= 1) & (rivals <= n_labels)).all())
    assert torch.equal(rivals[0], rivals[3]) and torch.equal(weights[0], weights[3])  # one order per label
    for b in range(4):
        used = rivals[b].unique()
        assert len(used) == min(n_labels - 1, draws)  # every other label when the draws allow
        for r in used:  # every rival that has draws counts alike: its weights sum to N / R
            assert float(weights[b][rivals[b] == r].sum()) == pytest.approx(draws / len(used))
    if draws % (n_labels - 1) == 0:
        assert bool((weights == 1).all())
    again, _ = rival_schedule(own, n_labels, draws, seed=4)
    assert torch.equal(rivals, again)
    with pytest.raises(ValueError, match="at least 2 labels"):
        rival_schedule(own.clamp(max=1), 1, draws)
    with pytest.raises(ValueError, match="own must be"):
        rival_schedule(torch.tensor([0]), n_labels, draws)


class NoNullStub(SmoothStub):
    """Refuses the null label: the cycled contrast never asks for it."""

    def predict_noise(self, x_t, t, cond):
        assert not bool((cond == 0).any()), "the null label was asked for"
        return super().predict_noise(x_t, t, cond)


def test_cycled_contrast_by_hand_at_the_cost_of_plain_scoring() -> None:
    x = _images(3, seed=6)
    cond = torch.tensor([2, 1, 3])
    est = TypicalityEstimator(draws=5, batch_size=4, seed=2)
    calls = []

    class Counting(NoNullStub):
        def predict_noise(self, x_t, t, cond):
            calls.append(len(cond))
            return super().predict_noise(x_t, t, cond)

    record = torch.zeros(3, 5, dtype=torch.float64)
    got = est.contrast_maps(Counting(), x, cond, 3, draw_means=record)
    assert got.shape == (3, H, W) and sum(calls) == 2 * 3 * 5  # 2 UNet inputs per draw, as plain scoring
    rivals, weights = rival_schedule(cond, 3, 5, seed=2)
    t, eps = est.sample_draws(1000, (C, H, W))
    stub = SmoothStub()
    want = torch.zeros(3, H, W)
    for d in range(5):
        x_t = stub.add_noise(x, eps[d].expand_as(x), t[d].expand(3))
        mine = (stub.predict_noise(x_t, t[d].expand(3), cond) - eps[d]).pow(2).mean(1)
        theirs = (stub.predict_noise(x_t, t[d].expand(3), rivals[:, d]) - eps[d]).pow(2).mean(1)
        want += weights[:, d].float().view(3, 1, 1) * (theirs - mine)
    assert torch.allclose(got, want / 5, atol=1e-5)
    assert torch.allclose(record.mean(1).float(), got.mean((1, 2)), atol=1e-6)  # the draws' terms average to the map


def test_cycled_contrast_estimates_the_contrast_of_all_labels() -> None:
    """Over many draws the cycled estimate (one rival per draw) and the contrast of the cotypicality
    maps (every rival on every draw) agree; at few draws the cycled one is noisier, not biased."""
    x0 = _images(1, seed=8)[0]
    share = torch.tensor([0.0, 0.9, 0.5, 0.2, 0.7])  # label j predicts share[j] x eps: L_j = (1 - share[j])^2 |eps|^2

    class ScaledStub(StubSchedule):
        def predict_noise(self, x_t, t, cond):
            abar = self._abar(t)
            return share[cond].view(-1, 1, 1, 1) * (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()

    cond = torch.tensor([1, 3])
    est = TypicalityEstimator(draws=600, batch_size=64, seed=1)
    full = label_contrast(est.cotypicality_maps(ScaledStub(), x0.expand(2, C, H, W), torch.arange(1, 5)), cond - 1)
    cycled = est.contrast_maps(ScaledStub(), x0.expand(2, C, H, W), cond, 4)
    loss = (1 - share[1:]) ** 2
    exact = torch.stack([(loss.sum() - loss[c - 1]) / 3 - loss[c - 1] for c in cond.tolist()])  # x E|eps|^2 = 1
    assert torch.allclose(full.mean((1, 2)), exact, rtol=0.05)
    assert torch.allclose(cycled.mean((1, 2)), exact, rtol=0.05)
    few = TypicalityEstimator(draws=6, batch_size=64, seed=1)  # 2 draws per rival: noisier per pixel
    err_cycled = (few.contrast_maps(ScaledStub(), x0.expand(2, C, H, W), cond, 4) - exact.view(2, 1, 1)).pow(2).mean()
    err_full = (
        (
            label_contrast(few.cotypicality_maps(ScaledStub(), x0.expand(2, C, H, W), torch.arange(1, 5)), cond - 1)
            - exact.view(2, 1, 1)
        )
        .pow(2)
        .mean()
    )
    assert float(err_cycled) > float(err_full)


# ------------------------------------------------------------------ shared draws == label by label
@pytest.mark.parametrize("batch_size", [2, 3, 4, 9, 128])
def test_shared_draws_equal_scoring_label_by_label_exactly(batch_size: int) -> None:
    x = _images(3, seed=1)
    labels = torch.tensor([2, 1, 3])
    est = TypicalityEstimator(draws=5, batch_size=batch_size, seed=7)
    stub = SmoothStub()
    co = est.cotypicality_maps(stub, x, labels)
    for j, lab in enumerate(labels.tolist()):
        alone = est.maps(stub, x, torch.full((3,), lab))
        assert torch.equal(co[:, j], alone), (batch_size, lab)


def test_shared_draws_equal_label_by_label_on_a_real_tiny_model() -> None:
    model = PixelDiffusion.create(
        ["a", "b", "c"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    ).eval()
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x0 = model.encode(images)
    labels = model.label_index(["a", "b", "c"])
    est = TypicalityEstimator(draws=4, batch_size=16, seed=0)
    co = est.cotypicality_maps(model, x0, labels)
    for j in range(3):
        alone = est.maps(model, x0, labels[j].expand(3))
        # the UNet sees differently composed batches: equal up to float rounding
        assert torch.allclose(co[:, j], alone, rtol=1e-5, atol=1e-6)
    assert co.abs().sum() > 0


def test_one_label_cotypicality_is_maps() -> None:
    x = _images(2, seed=3)
    est = TypicalityEstimator(draws=3, batch_size=4, seed=1)
    stub = SmoothStub()
    assert torch.equal(est.cotypicality_maps(stub, x, torch.tensor([2]))[:, 0], est.maps(stub, x, torch.tensor([2, 2])))


# ------------------------------------------------------------------ one forward: null once, then each label
@pytest.mark.parametrize("batch_size", [2, 3, 4, 8, 9, 128])
def test_each_draw_costs_l_plus_one_inputs_sharing_x_t(batch_size: int) -> None:
    stub = RecordingStub()
    x = _images(3, seed=4)
    labels = torch.tensor([1, 3, 2])
    est = TypicalityEstimator(draws=4, batch_size=batch_size, seed=9)
    progress: list[int] = []
    est.cotypicality_maps(stub, x, labels, progress=progress.append)
    assert all(c[0].shape[0] <= batch_size for c in stub.calls)
    x_t = torch.cat([c[0] for c in stub.calls])
    t = torch.cat([c[1] for c in stub.calls])
    cond = torch.cat([c[2] for c in stub.calls])
    assert x_t.shape[0] == 3 * 4 * (3 + 1)  # B N (L + 1), not B N 2L
    assert int((cond == 0).sum()) == 3 * 4  # the null branch once per (image, draw)
    # regroup into (image, draw) groups of L + 1 inputs, branch-major within a forward group
    pairs = max(1, batch_size // 4)
    pos = 0
    t_draws, _ = est.sample_draws(stub.num_train_timesteps, (C, H, W))
    seen = 0
    while pos < x_t.shape[0]:
        p = min(pairs, 12 - seen)
        g = slice(pos, pos + 4 * p)
        xg, tg, cg = x_t[g].view(4, p, C, H, W), t[g].view(4, p), cond[g].view(4, p)
        for k in range(4):
            assert torch.equal(xg[k], xg[0]) and torch.equal(tg[k], tg[0])
        assert cg[:3].T.tolist() == [labels.tolist()] * p and (cg[3] == 0).all()
        assert tg[0].tolist() == t_draws.repeat(3)[seen : seen + p].tolist()
        pos += 4 * p
        seen += p
    assert seen == 12
    assert progress and progress[-1] == 3 and progress == sorted(progress)


def test_cotypicality_rejects_the_null_label_and_bad_shapes() -> None:
    est = TypicalityEstimator(draws=2)
    with pytest.raises(ValueError, match="null label"):
        est.cotypicality_maps(SmoothStub(), _images(2), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="labels must be a non-empty"):
        est.cotypicality_maps(SmoothStub(), _images(2), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be a non-empty"):
        est.cotypicality_maps(SmoothStub(), _images(2), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"x0 must be \(B, C, H, W\)"):
        est.cotypicality_maps(SmoothStub(), _images(1)[0], torch.tensor([1]))


# ------------------------------------------------------------------ tables and the classifier
def test_cotypicality_frame_is_one_row_per_image_and_label() -> None:
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    df = cotypicality_frame(["i", "j", "k"], ["a", "b"], scores)
    assert list(df.columns) == ["image_id", "label", "typicality"]
    assert df["image_id"].tolist() == ["i", "i", "j", "j", "k", "k"]
    assert df["label"].tolist() == ["a", "b"] * 3
    assert df["typicality"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="2 label columns but 3 labels"):
        cotypicality_frame(["i", "j", "k"], ["a", "b", "c"], scores)
    with pytest.raises(ValueError, match="3 rows but 2 image ids"):
        cotypicality_frame(["i", "j"], ["a", "b"], scores)


def test_label_matrix_by_hand() -> None:
    scores = np.array([[1.0, 0.0, 0.0], [3.0, 2.0, 0.0], [0.0, 5.0, 1.0], [9.0, 9.0, 9.0]])
    mat = label_matrix(scores, ["x", "x", "y", "other"], ["x", "y", "z"])
    assert np.allclose(mat.loc["x"].to_numpy(), [2.0, 1.0, 0.0])
    assert np.allclose(mat.loc["y"].to_numpy(), [0.0, 5.0, 1.0])
    assert mat.loc["z"].isna().all()  # no image of label z
    assert mat.index.name == "image_label" and mat.columns.name == "label"


def test_predictions_accuracy_confusion_by_hand() -> None:
    labels = ["a", "b", "c"]
    scores = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 0.0, -1.0], [0.0, 0.0, 4.0], [0.5, 0.1, 0.2]])
    pred = predict_labels(scores, labels)
    assert pred.tolist() == ["a", "b", "a", "c", "a"]  # the tie in row 2 goes to the first label
    true = ["a", "b", "c", "c", "b"]
    assert classification_accuracy(true, pred) == pytest.approx(3 / 5)
    cm = confusion_matrix(true, pred, labels)
    assert cm.to_numpy().tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert cm.index.name == "true" and cm.columns.name == "predicted"
    assert int(cm.to_numpy().sum()) == 5
    conf = confused_labels(cm)
    assert conf[["true", "predicted", "count"]].values.tolist() == [["b", "a", 1], ["c", "a", 1]]
    assert conf["share"].tolist() == [0.5, 0.5]
    assert len(confused_labels(cm, top=1)) == 1
    with pytest.raises(ValueError, match="not in the label list"):
        confusion_matrix(["a", "q"], ["a", "a"], labels)
    assert np.isnan(classification_accuracy([], []))


def test_perfect_classifier_has_diagonal_confusion_and_no_confused_labels() -> None:
    labels = ["a", "b"]
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    cm = confusion_matrix(["a", "b"], predict_labels(scores, labels), labels)
    assert cm.to_numpy().tolist() == [[1, 0], [0, 1]]
    assert confused_labels(cm).empty


def test_stratified_split_is_deterministic_stratified_and_disjoint() -> None:
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"]
    rng = np.random.default_rng(0)
    labels = list(np.array(labels, dtype=object)[rng.permutation(len(labels))])
    train, test = stratified_split(labels, 0.2, seed=3)
    train2, test2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    counts = pd.Series(np.asarray(labels, dtype=object)[test]).value_counts().to_dict()
    assert counts == {"a": 2, "b": 1, "c": 1}  # round(0.2 n), at least one of >= 2 images; d stays in train
    other = stratified_split(labels, 0.2, seed=4)[1]
    assert not np.array_equal(other, test)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_multi_label_images_count_under_each_of_their_labels() -> None:
    """An image of several labels ("a|b") is an image of each: in the label matrix's rows, in the
    confusion matrix's rows, and a prediction of any of its labels is a hit."""
    from gcmodels.mining.cotypicality import classification_accuracy, confusion_matrix, label_matrix

    labels = ["a", "b", "c"]
    scores = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0]])
    own = ["a", "a|b", "c"]
    matrix = label_matrix(scores, own, labels)
    np.testing.assert_allclose(matrix.loc["a"].to_numpy(), [1.5, 1.5, 0.5])
    np.testing.assert_allclose(matrix.loc["b"].to_numpy(), [0.0, 2.0, 1.0])
    assert classification_accuracy(own, ["b", "b", "a"]) == pytest.approx(1 / 3)
    assert classification_accuracy(own, ["a", "b", "c"]) == 1.0
    counts = confusion_matrix(own, ["a", "b", "c"], labels)
    assert counts.to_numpy().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
