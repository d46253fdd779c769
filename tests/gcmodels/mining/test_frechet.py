"""The Frechet distance between Gaussians (gcmodels/mining/frechet.py) against scipy's matrix square
root, closed forms on known Gaussians, and nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from gcmodels.mining.frechet import (
    ALL,
    frechet_distance,
    frechet_distance_between,
    gaussian_stats,
    nearest_neighbours,
    sample_quality,
)


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy.linalg.sqrtm (as pytorch-fid computes it)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)


def _random_cov(rng, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_matches_scipy_sqrtm_on_known_gaussians(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-8, abs=1e-10)


def test_closed_forms() -> None:
    # equal Gaussians: 0; equal covariances: the squared distance of the means
    mu = np.array([1.0, -2.0, 0.5])
    s = np.diag([1.0, 4.0, 0.25])
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-12)
    assert frechet_distance(mu, s, mu + [3.0, 0.0, 4.0], s) == pytest.approx(25.0)
    # commuting (diagonal) covariances: sum of (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(
        ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    )
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0)


def test_singular_covariances_agree_with_scipy() -> None:
    # fewer samples than dimensions: rank-deficient covariances, as 8 samples on 32-d features give
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = _random_cov(rng, 12, rank=5), _random_cov(rng, 12, rank=7)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours >= 0 and ours == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-5)


def test_from_samples_converges_to_the_gaussians_distance() -> None:
    rng = np.random.default_rng(0)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance_between(a, b) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=0.02)
    m, s = gaussian_stats(a)
    assert m.shape == (d,) and s.shape == (d, d) and np.allclose(s, s1, atol=0.02)
    assert frechet_distance_between(a[:1000], a[1000:2000]) < frechet_distance_between(a[:1000], b[:1000])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance_between(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_nearest_neighbours() -> None:
    refs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    idx, dist = nearest_neighbours(np.array([[1.0, 1.0], [9.0, 1.0], [0.0, 7.0], [5.0, 0.0]]), refs)
    assert idx.tolist() == [0, 1, 2, 0] and dist == pytest.approx([np.sqrt(2), np.sqrt(2), 3.0, 5.0])
    with pytest.raises(ValueError):
        nearest_neighbours(np.zeros((2, 2)), np.zeros((0, 2)))


def test_quality_table_by_hand() -> None:
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(10, 1, (20, 3))])
    real_labels = np.array(["a"] * 20 + ["b"] * 20, dtype=object)
    # a's samples look like a's images; b's samples: two like b, one like a
    gen = np.concatenate([rng.normal(0, 1, (3, 3)), rng.normal(10, 1, (2, 3)), rng.normal(0, 1, (1, 3))])
    gen_labels = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    q, nearest, dist = sample_quality(gen_labels, gen, real_labels, real)
    assert q["label"].tolist() == ["a", "b", ALL]
    assert q["samples"].tolist() == [3, 3, 6] and q["real_images"].tolist() == [20, 20, 40]
    assert q["nearest_label_share"].tolist() == pytest.approx([1.0, 2 / 3, 5 / 6])
    assert q.loc[0, "frechet"] == pytest.approx(frechet_distance_between(real[:20], gen[:3]))
    assert q.loc[2, "frechet"] == pytest.approx(frechet_distance_between(real, gen))
    assert q.loc[1, "frechet"] > q.loc[0, "frechet"]  # b's samples are further from b's images
    assert (real_labels[nearest] == ["a", "a", "a", "b", "b", "a"]).all()
    assert dist == pytest.approx(np.linalg.norm(gen - real[nearest], axis=1))


def test_quality_table_with_a_single_sample_has_no_distance() -> None:
    q, _, _ = sample_quality(
        np.array(["a"], dtype=object), np.zeros((1, 2)), np.array(["a", "a"], dtype=object), np.eye(2)
    )
    assert np.isnan(q.loc[0, "frechet"]) and q.loc[0, "nearest_label_share"] == 1.0


def test_inception_features_call_the_network_as_the_fid_metrics_do(tmp_path) -> None:
    """uint8 NCHW batches, return_features=True, (N, 2048) float64; batches do not change them."""
    import torch
    from tiny_inception import build_tiny_inception

    from gcmodels.mining.frechet import INCEPTION_DIM, inception_features

    network = torch.jit.load(str(build_tiny_inception(tmp_path / "inception.pt")))
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 20, 3), dtype=np.uint8)
    feats = inception_features(network, images, batch_size=2)
    assert feats.shape == (5, INCEPTION_DIM) and feats.dtype == np.float64
    direct = network(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), return_features=True)
    np.testing.assert_allclose(feats, direct.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 RGB images"):
        inception_features(network, images.astype(np.float32))
    wrong = torch.jit.load(str(build_tiny_inception(tmp_path / "wrong.pt", features=10)))
    with pytest.raises(ValueError, match="gave 10 features per image, not 2048"):
        inception_features(wrong, images)
