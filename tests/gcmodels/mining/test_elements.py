"""Tests of visual-element mining: k-means on patch features, elements ranked by median typicality."""

from __future__ import annotations

import numpy as np
import pytest

from gcmodels.mining.elements import Elements, label_specificity, mine_elements


def _groups(sizes=(10, 20, 30), typ=(1.0, 5.0, 3.0), seed: int = 0):
    """Features of three well separated directions (clusters survive L2 normalisation)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 6) * 10.0
    feats, tys, group = [], [], []
    for g, (n, t) in enumerate(zip(sizes, typ)):
        feats.append(centres[g] + rng.normal(scale=0.3, size=(n, 6)))
        tys.append(t + rng.normal(scale=0.1, size=n))
        group += [g] * n
    perm = rng.permutation(sum(sizes))
    return np.concatenate(feats)[perm], np.concatenate(tys)[perm], np.asarray(group)[perm]


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_three_groups_ranked_by_median_typicality(method: str) -> None:
    feats, typ, group = _groups()
    el = mine_elements(feats, typ, 3, seed=0, method=method)
    assert isinstance(el, Elements)
    p = len(feats)
    assert el.assignment.shape == (p,) and el.distance.shape == (p,)
    assert el.score.shape == (3,) and el.size.shape == (3,)
    # every element is exactly one group
    for e in range(3):
        assert len(set(group[el.assignment == e])) == 1
    # element 0 = group 1 (median 5), element 1 = group 2 (median 3), element 2 = group 0 (median 1)
    expected_group = {0: 1, 1: 2, 2: 0}
    for e, g in expected_group.items():
        assert set(group[el.assignment == e]) == {g}
    assert el.size.tolist() == [20, 30, 10]
    assert np.all(np.diff(el.score) < 0)
    for e in range(3):
        assert el.score[e] == pytest.approx(np.median(typ[el.assignment == e]))
    assert np.all(el.distance >= 0) and np.all(np.isfinite(el.distance))
    assert el.size.sum() == p


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_scale_of_features_does_not_matter(method: str) -> None:
    # L2 normalisation: scaling a patch's feature vector does not move it to another element
    feats, typ, _group = _groups(seed=1)
    scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(len(feats), 1))
    a = mine_elements(feats, typ, 3, seed=0, method=method)
    b = mine_elements(feats * scale, typ, 3, seed=0, method=method)
    assert np.array_equal(a.assignment, b.assignment)


def test_deterministic_for_a_seed() -> None:
    feats, typ, _ = _groups(seed=3)
    a = mine_elements(feats, typ, 5, seed=4)
    b = mine_elements(feats, typ, 5, seed=4)
    assert np.array_equal(a.assignment, b.assignment)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.size, b.size)


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_fewer_patches_than_elements(method: str) -> None:
    feats = np.array([[1.0, 0.0], [0.0, 1.0]])
    el = mine_elements(feats, np.array([0.5, 2.0]), 8, seed=0, method=method)
    assert el.score.shape == (2,) and el.size.tolist() == [1, 1]
    assert el.assignment.tolist() == [1, 0]
    assert el.score.tolist() == [2.0, 0.5]


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_duplicate_features_cap_the_number_of_elements(method: str) -> None:
    feats = np.array([[1.0, 0.0]] * 4 + [[0.0, 2.0]] * 3)
    el = mine_elements(feats, np.arange(7.0), 5, seed=0, method=method)
    assert el.score.shape == (2,)
    assert sorted(el.size.tolist()) == [3, 4]


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_single_patch(method: str) -> None:
    el = mine_elements(np.ones((1, 4)), np.array([0.3]), 3, seed=0, method=method)
    assert el.assignment.tolist() == [0] and el.size.tolist() == [1]
    assert el.score.tolist() == pytest.approx([0.3])


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="no patches"):
        mine_elements(np.zeros((0, 4)), np.zeros(0), 3, seed=0)
    with pytest.raises(ValueError, match=r"typicality must be \(5,\)"):
        mine_elements(np.ones((5, 4)), np.zeros(4), 3, seed=0)
    with pytest.raises(ValueError, match=r"typicality must be \(5,\)"):
        mine_elements(np.ones((5, 4)), np.zeros((5, 1)), 3, seed=0)


def test_median_interval_is_the_binomial_order_statistic_interval() -> None:
    """n = 20: P(B <= 5) = 0.0207 for B ~ Bin(20, 1/2), so the 95 % interval is [x_(6), x_(15)]
    (1-based) with coverage 1 - 2 x 0.0207; too few values give the whole range, with its
    coverage; the interval does not depend on the order of the values."""
    from gcmodels.mining.elements import median_interval

    lo, hi, coverage = median_interval(np.arange(20.0)[::-1])
    assert (lo, hi) == (5.0, 14.0) and coverage == pytest.approx(1 - 2 * 0.020694732666015625)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, pytest.approx(0.75))
    lo, hi, coverage = median_interval(np.random.default_rng(0).normal(size=400))
    assert lo < 0 < hi and hi - lo < 0.3 and coverage >= 0.95
    with pytest.raises(ValueError):
        median_interval([])


def test_element_scores_come_with_their_interval() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (30, 4)) + 5, rng.normal(0, 0.1, (12, 4)) - 5])
    typicality = np.concatenate([rng.normal(1.0, 0.2, 30), rng.normal(0.2, 0.2, 12)])
    found = mine_elements(features, typicality, 2, seed=0)
    assert (found.score_lo <= found.score).all() and (found.score <= found.score_hi).all()
    assert found.score_lo[0] > found.score_hi[1]  # the two elements' typicality told apart


def _shared_set(seed: int = 0):
    """Two labels: each has its own motif (a direction only its patches take) and a ring (one
    direction both labels' patches take); the ring is the more typical of label a."""
    rng = np.random.default_rng(seed)
    dirs = np.eye(3, 6) * 10.0  # 0: a's motif, 1: b's motif, 2: the ring
    feats, labels, kind, typ = [], [], [], []
    for lab, own in (("a", 0), ("b", 1)):
        for d, n, t in ((own, 20, 2.0), (2, 20, 3.0 if lab == "a" else 1.0)):
            feats.append(dirs[d] + rng.normal(scale=0.3, size=(n, 6)))
            labels += [lab] * n
            kind += ["ring" if d == 2 else "motif"] * n
            typ.append(t + rng.normal(scale=0.1, size=n))
    return np.concatenate(feats), np.array(labels), np.array(kind), np.concatenate(typ)


def test_label_specificity_is_one_for_a_labels_own_patches_and_chance_for_shared_ones() -> None:
    feats, labels, kind, _ = _shared_set()
    spec = label_specificity(feats, labels, neighbours=10)
    assert spec.shape == (80,)
    assert np.all(spec[kind == "motif"] == 1.0)  # the 19 other motif patches of its label are nearer
    assert 0.2 <= np.median(spec[kind == "ring"]) <= 0.8  # chance: a half
    assert np.array_equal(spec, label_specificity(feats, labels, neighbours=10, block=7))  # blocks change nothing
    assert label_specificity(feats[:1], labels[:1]).tolist() == [1.0]
    with pytest.raises(ValueError, match=r"labels must be \(80,\)"):
        label_specificity(feats, labels[:5])


def test_shared_elements_are_flagged_and_ranked_last_on_request() -> None:
    feats, labels, kind, typ = _shared_set()
    spec = label_specificity(feats, labels, neighbours=10)
    a = labels == "a"
    paper = mine_elements(feats[a], typ[a], 2, seed=0, specificity=spec[a], chance=0.5)
    assert set(kind[a][paper.assignment == 0]) == {"ring"}  # the paper's order: the ring is a's most typical
    assert paper.shared.tolist() == [True, False] and paper.specificity[1] == 1.0
    last = mine_elements(feats[a], typ[a], 2, seed=0, specificity=spec[a], chance=0.5, shared_last=True)
    assert set(kind[a][last.assignment == 0]) == {"motif"} and last.shared.tolist() == [False, True]
    assert last.score.tolist() == paper.score[::-1].tolist()
    plain = mine_elements(feats[a], typ[a], 2, seed=0)  # nothing measured: nothing shared, the paper's order
    assert np.isnan(plain.specificity).all() and not plain.shared.any()
    assert np.array_equal(plain.assignment, paper.assignment)


def test_ward_distances_are_to_the_element_mean_and_unknown_methods_are_refused() -> None:
    feats, typ, _group = _groups(seed=5)
    el = mine_elements(feats, typ, 3, seed=0, method="ward")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for e in range(3):
        members = unit[el.assignment == e]
        np.testing.assert_allclose(el.distance[el.assignment == e], np.linalg.norm(members - members.mean(0), axis=1))
    # deterministic: the seed plays no part
    assert np.array_equal(el.assignment, mine_elements(feats, typ, 3, seed=9, method="ward").assignment)
    with pytest.raises(ValueError, match="method must be 'kmeans' or 'ward'"):
        mine_elements(feats, typ, 3, seed=0, method="dbscan")
