"""Tests of adaptive draws (successive elimination against each label's top-K patches)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import norm
from stub_schedule import StubSchedule

from gcmodels.mining.adaptive import (
    AdaptiveRule,
    VariancePrior,
    adaptive_maps,
    draw_order,
    fit_variance_prior,
    half_width,
    membership,
    round_sizes,
    selection_decided,
    standard_error,
)
from gcmodels.mining.patches import top_patches
from gcmodels.mining.typicality import TypicalityEstimator

H = W = 14
SCALE = 1e5  # channel 1 carries the quality q of each pixel, far above the noise, on a 0.01 grid
BG = 0.1  # quality of the background


class QualityStub(StubSchedule):
    """A model with known per-pixel typicality. x0 has two channels: channel 0 is 0 (so eps is
    recovered exactly from x_t), channel 1 is SCALE * q, q in [0, 1] on a 0.01 grid (read back from
    x_t by rounding). Under a real label the prediction of channel 0 is q * eps, under the null
    label 0; channel 1 is predicted 0 by both (it adds nothing to the maps). The integrand at a
    pixel is then eps^2 (1 - (1 - q)^2) / 2 (channels averaged): its expectation
    (1 - (1 - q)^2) / 2 does not depend on t, its noise is eps^2's. Per input: the output of an
    input does not depend on the rest of its batch."""

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t)
        q = torch.round(x_t[:, 1:2] / (abar.sqrt() * SCALE) * 100) / 100
        eps0 = x_t[:, :1] / (1 - abar).sqrt()
        pred = torch.zeros_like(x_t)
        pred[:, :1] = torch.where((cond != 0).view(-1, 1, 1, 1), q * eps0, torch.zeros_like(eps0))
        return pred


def _expected_patch(q: float) -> float:
    return (1 - (1 - q) ** 2) / 2


def _collection(values: list[float]) -> torch.Tensor:
    """Images of background quality BG with a PATCH x PATCH square of quality q (at a place that moves
    with the image): the image's best patch is the square, expected score _expected_patch(q)."""
    x0 = torch.zeros((len(values), 2, H, W))
    x0[:, 1] = BG * SCALE
    for i, v in enumerate(values):
        y, x = 1 + i % 7, 1 + (3 * i) % 7
        x0[i, 1, y : y + PATCH, x : x + PATCH] = v * SCALE
    return x0


VALUES = [1.0, 0.98, 0.96, 0.94, 0.92] + [0.12 + 0.01 * i for i in range(14)] + [0.6, 0.55, 0.4]
K = 5  # the top-K patches per label; per_image 1: the K images of highest quality
PATCH = 5


def _run(model, x0, cond, est, rule, chunk=64):
    groups = [(np.arange(len(x0)), lambda pos: x0[torch.as_tensor(pos)])]
    return adaptive_maps(est, model, groups, cond, rule, chunk=chunk)


@pytest.fixture(scope="module")
def setting():
    model = QualityStub()
    est = TypicalityEstimator(draws=32, batch_size=16, seed=3)
    x0 = _collection(VALUES)
    cond = torch.ones(len(VALUES), dtype=torch.long)
    rule = AdaptiveRule(first=4, z=2.0, top_k=K, per_image=1, patch=PATCH)
    return model, est, x0, cond, rule, _run(model, x0, cond, est, rule)


def test_draw_order_is_a_bit_reversed_permutation() -> None:
    assert draw_order(16)[:4].tolist() == [0, 8, 4, 12]
    for n in (1, 2, 5, 16, 17, 100):
        assert sorted(draw_order(n).tolist()) == list(range(n))
    assert round_sizes(4, 16) == [4, 8, 16] and round_sizes(4, 20) == [4, 8, 16, 20] and round_sizes(8, 4) == [4]


def test_half_width_is_wider_on_few_draws() -> None:
    assert half_width(2.0, 4) == pytest.approx(4.5, abs=0.1) and half_width(2.0, 1) == np.inf
    assert half_width(2.0, 4) > half_width(2.0, 8) > half_width(2.0, 64) > 2.0 > half_width(1.0, 64)


def test_standard_error_of_draws() -> None:
    """Collapsed strata: pairs of neighbours in draw (t) order; a trend over t is not noise."""
    v = np.array([[1.0, 3.0, 5.0, 7.0], [1.0, 2.0, 5.0, 4.0]])
    assert standard_error(v)[0] == pytest.approx(np.sqrt((4 / 2 + 4 / 2) / 2 / 4))
    assert standard_error(v)[1] == pytest.approx(np.sqrt((1 / 2 + 1 / 2) / 2 / 4))
    assert standard_error(np.array([2.0, 2.0, 2.0, 2.0, 9.0])) == 0.0  # an odd last draw is left out
    assert standard_error(v.T, axis=0) == pytest.approx(standard_error(v))
    assert np.isinf(standard_error(np.ones((3, 1)))).all()


def test_draw_terms_summed_in_draw_order_give_the_plain_map_bit_for_bit() -> None:
    model, est = QualityStub(), TypicalityEstimator(draws=8, batch_size=6, seed=1)
    x0 = _collection([1.0, 0.5, 0.2])
    cond = torch.ones(3, dtype=torch.long)
    terms = est.draw_terms(model, x0, cond, torch.from_numpy(draw_order(8)))  # visited out of order
    order = np.argsort(draw_order(8))
    acc = torch.zeros(3, H, W)
    for j in order:
        acc += terms[:, j]
    assert torch.equal(acc / 8, est.maps(model, x0, cond))


def test_settled_images_get_fewer_draws_boundary_ones_all(setting) -> None:
    _model, est, _x0, _cond, rule, res = setting
    n = len(VALUES)
    top = np.arange(K)  # the K images of smallest value: the exact top-K
    far = np.arange(5, 19)  # quality <= 0.25: far below the top
    assert (res.draws[top] == est.draws).all(), res.draws
    assert (res.draws[far] < est.draws).all(), res.draws
    assert (res.draws[far] == rule.first).mean() >= 0.5  # most are settled by the first pass alone
    boundary = np.array([19, 20])  # quality 0.6, 0.55: below the top, but not surely so on a few draws
    assert (res.draws[boundary] > 2 * rule.first).all(), res.draws
    assert res.draws[21] <= res.draws[boundary].min()  # quality 0.4: settled no later than the boundary
    assert res.draws.sum() <= 0.5 * n * est.draws
    assert res.rounds >= 2


def test_selected_top_k_equals_the_exact_and_the_plain_one(setting) -> None:
    model, est, x0, cond, rule, res = setting
    exact = np.argsort([-_expected_patch(v) for v in VALUES], kind="stable")[:K]
    _, ad_scores = top_patches(torch.from_numpy(np.stack(res.maps)), rule.patch, 1)
    plain = est.maps(model, x0, cond)
    _, pl_scores = top_patches(plain, rule.patch, 1)
    chosen = set(np.argsort(-ad_scores[:, 0].numpy(), kind="stable")[:K].tolist())
    assert chosen == set(exact.tolist()) == set(np.argsort(-pl_scores[:, 0].numpy(), kind="stable")[:K].tolist())


def test_images_scored_to_n_get_the_plain_map_exactly(setting) -> None:
    model, est, x0, cond, _rule, res = setting
    plain = est.maps(model, x0, cond).numpy()
    full = np.flatnonzero(res.draws == est.draws)
    assert len(full) >= K
    for i in full:
        np.testing.assert_array_equal(res.maps[i], plain[i])
    assert res.typicality[full] == pytest.approx(plain[full].mean((1, 2)).astype(np.float64), rel=1e-6)


def test_settled_maps_are_means_of_their_draws_and_precision_is_reported(setting) -> None:
    model, est, x0, cond, rule, res = setting
    i = int(np.flatnonzero(res.draws == rule.first)[0])
    drawn = draw_order(est.draws)[: rule.first]
    terms = est.draw_terms(model, x0[i : i + 1], cond[i : i + 1], torch.from_numpy(np.sort(drawn)))[0]
    np.testing.assert_allclose(res.maps[i], terms.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(res.typicality_se).all() and (res.typicality_se > 0).all()
    assert np.isfinite(res.top_patch_se).all() and (res.top_patch_se > 0).all()
    # the standard error of a patch scored to N is its known one: the mean of PATCH^2 pixels of
    # k eps^2 (variance 2 k^2) over N draws, k = _expected_patch(q)
    full = np.flatnonzero(res.draws == est.draws)
    known = np.array([_expected_patch(VALUES[i]) for i in full]) * np.sqrt(2 / PATCH**2 / est.draws)
    assert 0.5 < np.median(res.top_patch_se[full] / known) < 1.5


def test_same_run_twice_gives_the_same_maps_whatever_the_chunking(setting) -> None:
    model, est, x0, cond, rule, res = setting
    again = _run(model, x0, cond, est, rule, chunk=7)
    assert (again.draws == res.draws).all()
    for a, b in zip(again.maps, res.maps):
        np.testing.assert_array_equal(a, b)


def test_threshold_is_per_label() -> None:
    """Two labels, each with its own top: an image of label 2 whose patch is far below label 1's
    top but the best of label 2 is refined to N."""
    model, est = QualityStub(), TypicalityEstimator(draws=16, batch_size=16, seed=3)
    values = [1.0, 0.95] + [0.2] * 10 + [0.6] + [0.15] * 10
    cond = torch.tensor([1] * 12 + [2] * 11)
    res = _run(model, _collection(values), cond, est, AdaptiveRule(first=4, z=2.0, top_k=1, per_image=1, patch=PATCH))
    assert res.draws[12] == est.draws and res.draws[0] == est.draws
    assert (res.draws[2:12] < est.draws).all() and (res.draws[13:] < est.draws).all()


def test_top_k_larger_than_the_candidates_settles_nothing() -> None:
    model, est = QualityStub(), TypicalityEstimator(draws=8, batch_size=16, seed=0)
    values = [1.0, 0.2, 0.2, 0.2]
    res = _run(
        model,
        _collection(values),
        torch.ones(4, dtype=torch.long),
        est,
        AdaptiveRule(first=2, top_k=10, per_image=1, patch=PATCH),
    )
    assert (res.draws == 8).all()


@pytest.mark.parametrize("kwargs", [{"first": 1}, {"z": 0.0}, {"top_k": 0}, {"patch": 0}])
def test_bad_rule_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AdaptiveRule(**kwargs)


def test_plain_maps_record_each_draws_image_typicality() -> None:
    model, est = QualityStub(), TypicalityEstimator(draws=8, batch_size=6, seed=1)
    x0 = _collection([1.0, 0.5, 0.2])
    cond = torch.ones(3, dtype=torch.long)
    rec = torch.zeros(3, 8, dtype=torch.float64)
    m = est.maps(model, x0, cond, draw_means=rec)
    assert torch.equal(m, est.maps(model, x0, cond))  # recording does not change the maps
    np.testing.assert_allclose(rec.mean(1).numpy(), m.mean((1, 2)).double().numpy(), rtol=1e-5)
    terms = est.draw_terms(model, x0, cond, torch.arange(8))
    np.testing.assert_allclose(rec.numpy(), terms.mean((2, 3)).double().numpy(), rtol=1e-6)


# --- the decision rule: top-K membership and each image's own selection, by paired differences


def _decision(k: int = K, decide: int = 1, z: float = 2.0) -> AdaptiveRule:
    return AdaptiveRule(first=4, z=z, top_k=k, per_image=1, patch=PATCH, kind="decision", decide=decide)


def test_selection_decided_by_paired_differences() -> None:
    """A patch that beats every rival in each draw is decided although every draw's level moves
    with t far more than the gap (the trend cancels in the paired difference); a rival as good on
    average is not beaten; a rival within the tolerance need not be."""
    rng = np.random.default_rng(0)
    n, hp, wp = 8, 10, 10
    trend = np.linspace(1.0, 20.0, n)[:, None, None]  # draw level rising over t
    pooled = trend * (0.5 + 0.001 * rng.standard_normal((n, hp, wp)))
    pooled[:, 2, 2] += trend[:, 0, 0] * 0.05  # the best patch, top-left corner (x 2, y 2)
    rule = AdaptiveRule(per_image=2, patch=3, kind="decision", decide=1, shift=1)
    box = np.array([[2, 2, 5, 5], [-1, -1, -1, -1]])
    assert selection_decided(pooled, box, rule)
    unpaired = pooled[:, 2, 2].mean() - half_width(2.0, n) * standard_error(pooled[:, 2, 2])
    assert unpaired < pooled[:, 8, 8].mean()  # each patch on its own: not separable
    tie = pooled.copy()
    tie[:, 8, 8] = tie[:, 2, 2] + 0.01 * rng.standard_normal(n) * trend[:, 0, 0]  # as good, far away
    assert not selection_decided(tie, box, rule)
    near = pooled.copy()
    near[:, 3, 3] = near[:, 2, 2] + 0.001  # slightly better, one cell off: within shift 1
    assert selection_decided(near, box, rule)
    assert not selection_decided(near, box, AdaptiveRule(per_image=2, patch=3, kind="decision", shift=0))
    assert not selection_decided(pooled[:1], box, rule)  # one draw decides nothing
    # decide=2: the second patch must beat the rivals left once the first one's neighbourhood is out
    second = np.array([[2, 2, 5, 5], [6, 6, 9, 9]])
    assert not selection_decided(pooled, second, AdaptiveRule(per_image=2, patch=3, kind="decision", decide=2))
    assert selection_decided(pooled, second, AdaptiveRule(per_image=2, patch=3, kind="decision", decide=1))


def test_membership_by_paired_differences_over_the_common_draws() -> None:
    """Patches whose draws share one level per draw (the same t for every image) are ordered by
    paired differences; a patch with fewer draws is compared over the draws both have."""
    n, p = 8, 6
    order = draw_order(n)
    level = np.linspace(1.0, 10.0, n)  # by draw index
    gaps = np.array([3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    rng = np.random.default_rng(1)
    values = level[None, :] * (1 + 0.1 * gaps[:, None]) + 0.01 * rng.standard_normal((p, n))
    draws = np.full(p, n)
    inside, outside = membership(values, draws, order, 2, 2.0)
    assert inside.tolist() == [True, True, False, False, False, False]
    assert outside.tolist() == [False, False, True, True, True, True]
    few = values.copy()
    few[5, np.sort(order[4:])] = np.nan  # the last one settled at 4 draws
    inside, outside = membership(few, np.array([n] * 5 + [4]), order, 2, 2.0)
    assert inside[:2].all() and outside[2:].all()
    tied = values.copy()
    tied[2] = tied[1] + 0.02 * rng.standard_normal(n)  # 2nd and 3rd indistinguishable
    inside, outside = membership(tied, draws, order, 2, 2.0)
    assert inside[0] and not inside[1] and not outside[1] and not inside[2] and not outside[2]
    inside, outside = membership(values[:2], draws[:2], order, 2, 2.0)  # at most k: all in
    assert inside.all() and not outside.any()


@pytest.fixture(scope="module")
def decided(setting):
    model, est, x0, cond, _rule, _res = setting
    return _run(model, x0, cond, est, _decision())


def test_decision_settles_the_far_and_the_sure_and_refines_the_boundary(setting, decided) -> None:
    model, est, x0, cond, rule, res = setting
    far = np.arange(5, 19)  # quality <= 0.25: far below the top, but barely above the background
    boundary = np.array([19, 20])  # quality 0.6, 0.55 against the top 5 (>= 0.92)
    # membership alone (decide=0): the far ones stop early, the boundary ones are refined, and
    # paired differences settle no later than the elimination rule's separate bounds
    membership_only = _run(model, x0, cond, est, _decision(decide=0))
    assert (membership_only.draws[far] < est.draws).all(), membership_only.draws
    assert (membership_only.draws[boundary] > 2 * rule.first).all(), membership_only.draws
    assert membership_only.draws.sum() <= res.draws.sum()
    # with the rank-0 patch to decide too: the boundary is refined to N; an image surely inside the
    # top-K or surely outside it, whose square stands clear of the background, stops early
    assert (decided.draws[boundary] == est.draws).all(), decided.draws
    assert decided.draws[21] < est.draws and (decided.draws[:K] < est.draws).any(), decided.draws
    assert decided.draws.sum() < len(VALUES) * est.draws


def test_decision_selection_equals_the_exact_and_the_plain_one(setting, decided) -> None:
    model, est, x0, cond, _rule, _res = setting
    maps = torch.from_numpy(np.stack(decided.maps))
    boxes, scores = top_patches(maps, PATCH, 1)
    plain_boxes, plain_scores = top_patches(est.maps(model, x0, cond), PATCH, 1)
    exact = set(np.argsort([-_expected_patch(v) for v in VALUES], kind="stable")[:K].tolist())
    assert set(np.argsort(-scores[:, 0].numpy(), kind="stable")[:K].tolist()) == exact
    assert set(np.argsort(-plain_scores[:, 0].numpy(), kind="stable")[:K].tolist()) == exact
    # every image's rank-0 patch is the plain N one, up to the rule's tolerance
    tol = _decision().tolerance
    assert (np.abs((boxes[:, 0, :2] - plain_boxes[:, 0, :2]).numpy()).max(1) <= tol).all()
    for i in np.flatnonzero(decided.draws == est.draws):
        np.testing.assert_array_equal(decided.maps[i], est.maps(model, x0[i : i + 1], cond[i : i + 1])[0].numpy())


def test_decision_settles_clear_selections_when_top_k_holds_every_candidate() -> None:
    """rank.per_label above the candidates (the default on a small collection): elimination can
    settle nothing, the decision rule stops the images whose best patch is clear and refines those
    whose best patch barely stands out of the background."""
    model, est = QualityStub(), TypicalityEstimator(draws=16, batch_size=16, seed=3)
    values = [1.0, 0.9, 0.8, 0.7, 0.11, 0.12]
    x0, cond = _collection(values), torch.ones(6, dtype=torch.long)
    old = _run(model, x0, cond, est, AdaptiveRule(first=4, top_k=1000, per_image=1, patch=PATCH))
    new = _run(model, x0, cond, est, _decision(k=1000))
    assert (old.draws == 16).all()
    assert (new.draws[:4] < 16).all() and (new.draws[4:] == 16).all(), new.draws


def test_decision_is_deterministic_whatever_the_chunking(setting, decided) -> None:
    model, est, x0, cond, _rule, _res = setting
    again = _run(model, x0, cond, est, _decision(), chunk=5)
    assert (again.draws == decided.draws).all()
    for a, b in zip(again.maps, decided.maps):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [{"kind": "bandit"}, {"decide": 2}, {"shift": -2}])
def test_bad_decision_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AdaptiveRule(per_image=1, **kwargs)


# --- the moderated variance (score.adaptive_variance=moderated): an empirical Bayes prior pooled
# over the round's comparisons (Smyth 2004)


@pytest.mark.parametrize(("s0sq", "d0", "d"), [(2.0, 8.0, 2), (0.5, 4.0, 2), (1.0, 20.0, 4)])
def test_variance_prior_recovers_s0sq_and_d0(s0sq: float, d0: float, d: int) -> None:
    """True variances s0sq d0 / chi^2_d0, each estimated with d degrees of freedom: the fit gives
    back s0sq (within 5 %) and d0 (within 20 %) from 20000 comparisons."""
    rng = np.random.default_rng(0)
    sigma2 = s0sq * d0 / rng.chisquare(d0, 20000)
    prior = fit_variance_prior(sigma2 * rng.chisquare(d, 20000) / d, d)
    assert prior.s0sq == pytest.approx(s0sq, rel=0.05) and prior.d0 == pytest.approx(d0, rel=0.2), prior


def test_variance_prior_of_equal_variances_pools_everything() -> None:
    """All true variances equal: d0 is large (inf when the spread of log s2 is at most the sampling
    one), every posterior variance is near the common one, and its degrees of freedom are capped
    at d times the units."""
    rng = np.random.default_rng(1)
    prior = fit_variance_prior(3.0 * rng.chisquare(2, 20000) / 2, 2, units=100)
    assert prior.d0 > 50 and prior.s0sq == pytest.approx(3.0, rel=0.05), prior
    s2, df = prior.moderate(np.array([0.01, 3.0, 30.0]), 2)
    assert np.all(np.abs(s2 - 3.0) < 1.0) and df == min(prior.d0 + 2, 200)
    s2, df = VariancePrior(3.0, np.inf, max_df=50).moderate(np.array([0.5, 9.0]), 2)
    assert s2.tolist() == [3.0, 3.0] and df == 50


def test_variance_prior_of_degenerate_pools_is_no_prior() -> None:
    """One comparison, none, or only zero variances: nothing to pool (d0 = 0: each comparison keeps
    its own variance and degrees of freedom); a zero among others is floored, not -inf."""
    for s2 in ([1.0], [], [0.0, 0.0, 0.0], [np.inf, np.nan]):
        prior = fit_variance_prior(np.array(s2), 2)
        assert prior.d0 == 0, (s2, prior)
        own = np.array([0.5, 2.0])
        moderated, df = prior.moderate(own, 2)
        assert np.array_equal(moderated, own) and df == 2
    prior = fit_variance_prior(np.array([0.0, 1.0, 2.0, 0.5]), 2)
    assert np.isfinite(prior.s0sq) and 0 < prior.d0 < np.inf


def test_moderated_rule_settles_more_when_effects_are_clear() -> None:
    """Clear best patches (the square against the background): on 4 draws the own variance (2
    degrees of freedom, half-width 4.5 at z = 2) settles few images, the moderated one (the prior's
    degrees of freedom added) settles the clear ones earlier; the faint squares are refined to N
    under both, with plain N's map, and every selection is the plain one up to the tolerance."""
    model, est = QualityStub(), TypicalityEstimator(draws=16, batch_size=16, seed=3)
    values = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.11, 0.12]
    x0, cond = _collection(values), torch.ones(len(values), dtype=torch.long)
    own = _run(model, x0, cond, est, _decision(k=1000))
    moderated = _run(model, x0, cond, est, replace(_decision(k=1000), variance="moderated"))
    assert moderated.draws.sum() < own.draws.sum() and (moderated.draws <= own.draws).all(), (
        own.draws,
        moderated.draws,
    )
    assert (moderated.draws[:4] == 4).all() and (moderated.draws[6:] == 16).all(), moderated.draws
    plain = est.maps(model, x0, cond)
    plain_boxes, _ = top_patches(plain, PATCH, 1)
    boxes, _ = top_patches(torch.from_numpy(np.stack(moderated.maps)), PATCH, 1)
    assert (np.abs((boxes[:, 0, :2] - plain_boxes[:, 0, :2]).numpy()).max(1) <= _decision().tolerance).all()
    for i in np.flatnonzero(moderated.draws == 16):
        np.testing.assert_array_equal(moderated.maps[i], plain[i].numpy())


def test_moderated_rule_settles_no_image_without_an_effect() -> None:
    """Flat images (every position equally typical): any settled image would be a wrong decision;
    neither variance settles one, at z = 2 or z = 1."""
    model, est = QualityStub(), TypicalityEstimator(draws=16, batch_size=64, seed=0)
    x0 = torch.zeros((40, 2, H, W))
    x0[:, 1] = 0.5 * SCALE
    cond = torch.ones(40, dtype=torch.long)
    for z in (2.0, 1.0):
        res = _run(model, x0, cond, est, replace(_decision(k=1000, z=z), variance="moderated"))
        assert (res.draws == 16).all(), (z, res.draws)


@pytest.mark.parametrize("variance", ["own", "moderated"])
def test_paired_test_keeps_its_level_without_an_effect(variance: str) -> None:
    """One rival per image, no effect, true variances that differ between images (scaled
    inverse-chi-square, d0 = 6), 4 draws: the share of images decided (all wrongly) stays within
    the one-sided level 1 - Phi(z) (3 binomial standard deviations over 4000 images); with an
    effect the moderated test decides more often than the own one (its power)."""
    rng = np.random.default_rng(7)
    images, n, z = 4000, 4, 1.0
    rule = AdaptiveRule(per_image=1, patch=1, kind="decision", shift=0, z=z)
    sigma = np.sqrt(6 / rng.chisquare(6, images))
    box = np.array([[0, 0, 1, 1]])

    def decided_share(effect: float, how: str) -> float:
        pooled = np.zeros((images, n, 1, 2))
        pooled[:, :, 0, 0] = effect + sigma[:, None] * rng.standard_normal((images, n))
        prior = None
        if how == "moderated":
            diffs = pooled[:, :, 0, 0] - pooled[:, :, 0, 1]
            s2 = standard_error(diffs) ** 2 * n
            prior = fit_variance_prior(s2, n // 2, units=images)
        return float(np.mean([selection_decided(pooled[i], box, rule, prior) for i in range(images)]))

    alpha = float(norm.sf(z))
    assert decided_share(0.0, variance) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / images)
    if variance == "moderated":
        assert decided_share(1.0, "moderated") > decided_share(1.0, "own") + 0.05


@pytest.mark.parametrize("value", ["pooled", "OWN", ""])
def test_bad_variance_setting_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"variance must be one of \('own', 'moderated'\)"):
        AdaptiveRule(variance=value)
    with pytest.raises(ValueError, match="variance must be one of"):
        membership(np.zeros((3, 4)), np.full(3, 4), draw_order(4), 1, 2.0, variance=value)
