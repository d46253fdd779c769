"""Tests of the Monte-Carlo typicality estimator (common random numbers, stratified t, batching)."""

from __future__ import annotations

import pytest
import torch
from stub_schedule import StubSchedule

from gcmodels.diffusion import PixelDiffusion
from gcmodels.mining.typicality import TypicalityEstimator, typicality_from_losses

C, H, W = 3, 8, 10
ROWS, COLS = slice(2, 6), slice(3, 8)  # the region where the conditional branch is right


class RegionStub(StubSchedule):
    """Knows x0 (the same for every image), so it recovers eps exactly from x_t.

    Real label: predicts eps inside ROWS x COLS and 0 elsewhere. Null label: 0 everywhere.
    """

    def __init__(self, x0: torch.Tensor, T: int = 1000) -> None:
        super().__init__(T)
        self.x0 = x0  # (C, H, W)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t)
        eps = (x_t - abar.sqrt() * self.x0) / (1.0 - abar).sqrt()
        pred = torch.zeros_like(x_t)
        real = cond != 0
        pred[real, :, ROWS, COLS] = eps[real][:, :, ROWS, COLS]
        return pred


class SmoothStub(StubSchedule):
    """A deterministic elementwise predictor that depends on x_t, t and the label."""

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = (1.0 + 0.5 * cond.float()).view(-1, 1, 1, 1)
        tt = (t.float() / self.num_train_timesteps).view(-1, 1, 1, 1)
        return torch.tanh(x_t * scale) * (0.5 + tt)


class RecordingStub(SmoothStub):
    def __init__(self, T: int = 1000) -> None:
        super().__init__(T)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def predict_noise(self, x_t, t, cond):
        self.calls.append((x_t.clone(), t.clone(), cond.clone()))
        return super().predict_noise(x_t, t, cond)


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, C, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ exact values
def test_region_map_is_positive_exactly_inside_and_matches_hand_computation() -> None:
    x0 = _images(1)[0]
    stub = RegionStub(x0)
    est = TypicalityEstimator(draws=8, t_min=0.1, t_max=0.7, batch_size=6, seed=3)
    maps = est.maps(stub, torch.stack([x0, x0]), torch.tensor([1, 2]))
    assert maps.shape == (2, H, W) and maps.dtype == torch.float32
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[ROWS, COLS] = True
    for m in maps:
        assert torch.equal(m > 0, inside)
        assert torch.equal(m[~inside], torch.zeros(int((~inside).sum())))
    _, eps = est.sample_draws(stub.num_train_timesteps, (C, H, W))
    expected = eps.pow(2).mean(dim=(0, 1))  # mean over draws and channels
    assert torch.allclose(maps[0][inside], expected[inside], rtol=1e-4, atol=1e-6)
    assert torch.allclose(maps[1][inside], expected[inside], rtol=1e-4, atol=1e-6)


def test_typicality_from_losses_is_null_minus_cond() -> None:
    a, b = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    assert torch.equal(typicality_from_losses(a, b), torch.tensor([2.0, -1.0]))


# ------------------------------------------------------------------ common random numbers
def test_identical_images_get_identical_maps() -> None:
    x = _images(2)
    batch = torch.stack([x[0], x[1], x[0]])
    maps = TypicalityEstimator(draws=5, batch_size=4).maps(SmoothStub(), batch, torch.tensor([1, 1, 1]))
    assert torch.allclose(maps[0], maps[2], atol=1e-6, rtol=0)
    assert not torch.allclose(maps[0], maps[1])


def test_map_does_not_depend_on_batch_or_position() -> None:
    x = _images(2, seed=1)
    a, b = x[0], x[1]
    est = TypicalityEstimator(draws=6, batch_size=4, seed=1)
    stub = SmoothStub()
    ab = est.maps(stub, torch.stack([a, b]), torch.tensor([1, 2]))
    ba = est.maps(stub, torch.stack([b, a]), torch.tensor([2, 1]))
    a_alone = est.maps(stub, a[None], torch.tensor([1]))
    b_alone = est.maps(stub, b[None], torch.tensor([2]))
    assert torch.allclose(ab[0], ba[1], atol=1e-6, rtol=0)
    assert torch.allclose(ab[1], ba[0], atol=1e-6, rtol=0)
    assert torch.allclose(ab[0], a_alone[0], atol=1e-6, rtol=0)
    assert torch.allclose(ab[1], b_alone[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("draws", [1, 5, 7])
def test_batch_size_does_not_change_maps(draws: int) -> None:
    x = _images(3, seed=2)
    cond = torch.tensor([1, 2, 1])
    stub = SmoothStub()
    ref = TypicalityEstimator(draws=draws, batch_size=2, seed=4).maps(stub, x, cond)
    for bs in (3, 6, 7, 128):
        got = TypicalityEstimator(draws=draws, batch_size=bs, seed=4).maps(stub, x, cond)
        assert torch.allclose(got, ref, atol=1e-6, rtol=0), bs


def test_same_seed_is_deterministic_and_other_seed_differs() -> None:
    x = _images(2, seed=5)
    cond = torch.tensor([1, 1])
    stub = SmoothStub()
    m1 = TypicalityEstimator(draws=4, seed=11).maps(stub, x, cond)
    m2 = TypicalityEstimator(draws=4, seed=11).maps(stub, x, cond)
    m3 = TypicalityEstimator(draws=4, seed=12).maps(stub, x, cond)
    assert torch.equal(m1, m2)
    assert not torch.allclose(m1, m3)
    t1, e1 = TypicalityEstimator(draws=4, seed=11).sample_draws(1000, (C, H, W))
    t2, e2 = TypicalityEstimator(draws=4, seed=11).sample_draws(1000, (C, H, W))
    assert torch.equal(t1, t2) and torch.equal(e1, e2)


# ------------------------------------------------------------------ stratified t
@pytest.mark.parametrize(
    ("draws", "t_min", "t_max", "T", "seed"),
    [
        (16, 0.1, 0.7, 1000, 0),
        (16, 0.1, 0.7, 1000, 5),
        (7, 0.0, 1.0, 100, 1),
        (4, 0.25, 0.5, 1000, 2),
        (10, 0.3, 0.9, 50, 3),
    ],
)
def test_timesteps_are_stratified(draws: int, t_min: float, t_max: float, T: int, seed: int) -> None:
    est = TypicalityEstimator(draws=draws, t_min=t_min, t_max=t_max, seed=seed)
    t, eps = est.sample_draws(T, (C, H, W))
    assert t.dtype == torch.long and t.shape == (draws,)
    assert eps.shape == (draws, C, H, W) and eps.dtype == torch.float32
    assert int(t.min()) >= int(t_min * T) and int(t.max()) <= min(int(t_max * T), T - 1)
    width = (t_max - t_min) / draws
    for i, ti in enumerate(t.tolist()):
        lo = int((t_min + i * width) * T)
        hi = min(int((t_min + (i + 1) * width) * T), T - 1)
        assert lo <= ti <= hi, (i, ti, lo, hi)
    if (t_max - t_min) * T / draws >= 1:
        assert torch.all(t[1:] >= t[:-1])


def test_strata_are_filled_uniformly_over_seeds() -> None:
    # Pooled over many seeds, each stratum's draws spread over the whole stratum.
    T, draws = 1000, 4
    seen = [set() for _ in range(draws)]
    for seed in range(200):
        t, _ = TypicalityEstimator(draws=draws, t_min=0.2, t_max=0.6, seed=seed).sample_draws(T, (1, 1, 1))
        for i, ti in enumerate(t.tolist()):
            seen[i].add(ti)
    for i in range(draws):
        lo, hi = 200 + 100 * i, 200 + 100 * (i + 1)
        assert min(seen[i]) < lo + 15 and max(seen[i]) > hi - 15


# ------------------------------------------------------------------ one forward for both branches
@pytest.mark.parametrize("batch_size", [2, 5, 6, 128])
def test_both_branches_share_each_forward(batch_size: int) -> None:
    stub = RecordingStub()
    x = _images(3, seed=6)
    cond = torch.tensor([2, 1, 2])
    est = TypicalityEstimator(draws=4, batch_size=batch_size, seed=9)
    progress: list[int] = []
    est.maps(stub, x, cond, progress=progress.append)
    t_draws, _ = est.sample_draws(stub.num_train_timesteps, (C, H, W))
    total_pairs = 0
    for x_t, t, c in stub.calls:
        n = x_t.shape[0]
        assert n % 2 == 0 and 2 <= n <= max(2, batch_size)
        p = n // 2
        assert torch.equal(x_t[:p], x_t[p:])
        assert torch.equal(t[:p], t[p:])
        assert (c[p:] == 0).all()
        assert (c[:p] != 0).all()
        assert set(t.tolist()) <= set(t_draws.tolist())
        total_pairs += p
    assert total_pairs == 3 * 4
    # the conditional labels seen are exactly those of the images, draw by draw (image-major)
    conds = torch.cat([c[: c.shape[0] // 2] for _, _, c in stub.calls])
    assert conds.tolist() == cond.repeat_interleave(4).tolist()
    ts = torch.cat([t[: t.shape[0] // 2] for _, t, _ in stub.calls])
    assert ts.tolist() == t_draws.repeat(3).tolist()
    assert progress and progress[-1] == 3 and progress == sorted(progress)


# ------------------------------------------------------------------ errors
def test_null_label_is_rejected() -> None:
    with pytest.raises(ValueError, match="null label"):
        TypicalityEstimator(draws=2).maps(SmoothStub(), _images(2), torch.tensor([1, 0]))


def test_bad_shapes_are_rejected() -> None:
    est = TypicalityEstimator(draws=2)
    with pytest.raises(ValueError, match=r"x0 must be \(B, C, H, W\)"):
        est.maps(SmoothStub(), _images(1)[0], torch.tensor([1]))
    with pytest.raises(ValueError, match="cond must be"):
        est.maps(SmoothStub(), _images(2), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="cond must be"):
        est.maps(SmoothStub(), _images(2), torch.tensor([[1, 1]]))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"draws": 0}, "got 0"),
        ({"draws": -3}, "got -3"),
        ({"t_min": 0.7, "t_max": 0.7}, "t_min=0.7"),
        ({"t_min": 0.8, "t_max": 0.2}, "t_min=0.8"),
        ({"t_min": -0.1}, "t_min=-0.1"),
        ({"t_max": 1.5}, "t_max=1.5"),
        ({"batch_size": 1}, "got 1"),
        ({"batch_size": 0}, "got 0"),
    ],
)
def test_bad_estimator_settings_name_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        TypicalityEstimator(**kwargs)
    assert needle in str(err.value)


# ------------------------------------------------------------------ the real tiny model
@pytest.fixture(scope="module")
def tiny_model() -> PixelDiffusion:
    return PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    ).eval()


def test_real_tiny_model_maps(tiny_model: PixelDiffusion) -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x0 = tiny_model.encode(images)
    cond = tiny_model.label_index(["a", "b", "a"])
    est = TypicalityEstimator(draws=4, batch_size=8, seed=0)
    maps = est.maps(tiny_model, x0, cond)
    assert maps.shape == (3, 8, 8) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert maps.abs().sum() > 0
    again = TypicalityEstimator(draws=4, batch_size=4, seed=0).maps(tiny_model, x0, cond)
    assert torch.allclose(maps, again, atol=1e-4, rtol=1e-4)
    alone = est.maps(tiny_model, x0[1:2], cond[1:2])
    assert torch.allclose(maps[1], alone[0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ every parametrisation, read in eps space
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow_matching"])
def test_exact_model_map_is_positive_exactly_in_its_region_for_every_parametrisation(prediction: str) -> None:
    """A pixel model whose network is exact under the label inside a region (and outputs 0 under
    the null label) in its own parametrisation: the map is positive exactly there, zero elsewhere,
    and equals the null branch's eps-space error computed by hand."""
    from stub_schedule import exact_region_denoiser, null_branch_error

    model = PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction=prediction,
        generator=torch.Generator().manual_seed(0),
    ).eval()
    assert model.prediction == prediction
    x0 = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:6, 1:4] = True
    model._denoise = exact_region_denoiser(model, x0, region)
    est = TypicalityEstimator(draws=8, t_min=0.1, t_max=0.7, batch_size=6, seed=3)
    maps = est.maps(model, x0[None].expand(2, -1, -1, -1), torch.tensor([1, 2]))
    for m in maps:
        assert torch.equal(m > 0, region)
        assert torch.equal(m[~region], torch.zeros(int((~region).sum())))
    t, eps = est.sample_draws(model.num_train_timesteps, (3, 8, 8))
    expected = null_branch_error(model, x0, t, eps)
    assert torch.allclose(maps[0][region], expected[region], rtol=1e-4, atol=1e-6)
