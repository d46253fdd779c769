"""Adaptive draws: spend the (t, eps) draws of scoring where a label's top patches are decided.

The user reads a ranking (each label's `top_k` most typical patches, `per_image` non-overlapping
patches per image at most) and, image by image, the patches rank selects (the rank-0 patch is
where the image "points"): most images can never reach the top, and many maps point clearly
long before N draws. Scoring by rounds, per shard, with one of two rules (`AdaptiveRule.kind`):

1. **First pass**: every image gets `first` draws (n0).
2. **Bounds**: for every image, its current map (the mean of its draws) gives its `per_image`
   best patches (the greedy non-overlapping selection rank makes); each draw's map gives each of
   those patches a per-draw score, so each patch has a running mean mu and a standard error se
   (of a stratified design: draws paired with their neighbour in t, see `standard_error`). Its
   confidence bounds are mu +- h se, h = the Student t quantile, with as many degrees of freedom
   as pairs of draws, of the normal level z (z = 2: h = 4.5 on 4 draws, 2.9 on 8, 2.4 on 16): a
   standard error from a few draws is itself uncertain, and a z-rule on it would settle images
   whose error merely looks small.
3. **Stopping**, rule "elimination" (successive elimination): tau of a label = the `top_k`-th
   largest lower bound mu - h se over the patches of the label's images in the shard (-inf when
   they have fewer than `top_k` patches). An image whose best patch's upper bound mu + h se is
   below tau cannot enter the top-K: it is settled and gets no more draws.
   Rule "decision": an image is settled once both
   (a) its **top-K membership is decided**: each of its selected patches is surely inside the
       label's top-K of the shard (fewer than `top_k` other patches are not surely below it) or
       surely outside (at least `top_k` patches are surely above it), where "p surely above q"
       is a paired test: the per-draw difference of p's and q's scores over the draws both
       images have (the same (t, eps) by index: `TypicalityEstimator.sample_draws` gives every
       image the same draws, so the level every draw shares, which moves several-fold with t,
       cancels), lower bound mean - h se of the difference > 0 (`membership`); with at most
       `top_k` candidate patches in the label (the default rank.per_label = 1000 on a small
       collection) every patch is in and (a) holds at once; and
   (b) its **own selection is decided** for its `decide` best patches: each beats, by the same
       paired test within the image, every position greedy suppression leaves as its rival,
       except positions at most `tolerance` cells from it (`selection_decided`).
   **Variance of the paired tests** (`AdaptiveRule.variance`, decision rule only): "own" (the
   default) gives each comparison the variance of its own pairs of draws, n // 2 degrees of
   freedom (2 on the first pass: h = 4.5 at z = 2). "moderated" pools the variances over the
   comparisons (empirical Bayes, Smyth 2004, limma's moderated t): a scaled inverse-chi-square
   prior (s0^2, d0) of the true variances is fitted to the per-comparison estimates s^2 by the
   method of moments on log s^2 (`fit_variance_prior`, limma's `fitFDist`), and each comparison
   uses the posterior variance (d0 s0^2 + d s^2) / (d0 + d) with the t quantile of d0 + d degrees
   of freedom. Pools, fitted afresh each round: (b) all rival comparisons of all unsettled images
   of the shard with the same draw count (in a round, every unsettled image has the same count);
   (a) apart, each label's membership pairs compared over the same draws. d0 = inf (log s^2 spread
   no more than sampling gives: all variances equal) uses s0^2 for every comparison; d0 -> 0 (very
   unequal variances) falls back to each comparison's own; fewer than two finite estimates or a
   median of zero: no prior (own); zero variances are floored at 1e-5 x the median (as limma).
   The comparisons of one image share its draws and are not independent: the posterior degrees
   of freedom are capped at d x the images of the pool. The prior assumes the comparisons'
   variances are exchangeable: a rival next to the best patch (whose difference varies little)
   is shrunk toward the pool's typical variance like a far one.
4. The others are refined: the next round doubles their draws (n0, 2 n0, 4 n0, ..., N), then 2-3
   repeat until every image is settled or has all N draws. Images still undecided therefore end
   with exactly the N draws (and the map) of plain scoring.

Draws: the same N (t, eps) draws as plain scoring (`TypicalityEstimator.sample_draws`, t
stratified in N strata), visited in van der Corput (bit-reversed) order of their stratum, so that
each round's draws are spread over the whole t range (the first 4 of 16 are strata 0, 8, 4, 12)
and a partial mean is not a low-t mean. Each image's map is the sum of its draws' terms **in
draw order** divided by their number, so an image that reaches N draws gets plain scoring's map
bit for bit (for a model whose per-input output does not depend on the rest of its batch).

What the rules guarantee, and their limitations, stated rather than hidden:
- each test is a per-comparison t rule at level z, not a simultaneous guarantee over every image,
  rival position and round (the decision rule makes hundreds of comparisons per image: at a low z
  some are decided wrongly); an image that is never settled gets plain scoring's map bit for bit;
  a settled one keeps the map of its fewer draws, whose lower-ranked patches (beyond `decide`)
  and image typicality are less precise than plain N's;
- (b) decides the selection up to `tolerance` cells (patch // 2 by default): a settled image's
  rank-0 patch may sit that far from the one its full-N map would give;
- the tests are per shard: "surely out" of the shard's top-K implies out of the collection's
  (a shard's K-th best is at most the collection's), but "surely in" the shard's top-K does not
  imply in the collection's: with several shards, an image that the decision rule stops as
  surely inside its shard's top-K may sit at the collection's boundary, its score from fewer
  draws (a gather of the thresholds between rounds would fix it; not built);
- a patch compared over the draws both images have uses the first min(n_p, n_q) draws: its
  estimate of the difference is not the difference of the two images' own means;
- the standard error is that of collapsed strata (conservative where the trend over t shows
  within a pair of draws); "elimination" bounds each image on its own (conservative: the draws
  are shared by all images) and only the patch the current map ranks first, and never stops an
  image surely inside the top-K;
- memory: the per-draw maps of every image of the shard are held until the shard is done (to
  sum them in draw order): images x draws used x h x w float32, e.g. 256 images x 16 draws of
  32 x 32 = 16 MB, but 256 x 100 draws of SD's 64 x 64 latents = 420 MB; the decision rule's
  membership test compares every pair of a label's candidate patches in the shard
  ((images x per_image)^2 x draws per round, in blocks);
- no resume between rounds: a killed shard is scored again from its first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import digamma, polygamma
from scipy.stats import norm as normal
from scipy.stats import t as student_t
from torch import Tensor

from gcmodels.mining.patches import top_patches
from gcmodels.mining.typicality import NoisePredictor, TypicalityEstimator

__all__ = [
    "RULES",
    "VARIANCES",
    "AdaptiveResult",
    "AdaptiveRule",
    "VariancePrior",
    "adaptive_maps",
    "draw_order",
    "fit_variance_prior",
    "half_width",
    "membership",
    "round_sizes",
    "selection_decided",
    "standard_error",
]


def draw_order(n: int) -> np.ndarray:
    """The draw indices 0..n-1 in van der Corput order (bit-reversed index, those < n kept)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    bits = max(1, (n - 1).bit_length())
    rev = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)]
    return np.array([r for r in rev if r < n], dtype=np.int64)


def round_sizes(first: int, n: int) -> list[int]:
    """Draws an active image has after each round: first, 2 first, 4 first, ... capped at n."""
    sizes = [min(first, n)]
    while sizes[-1] < n:
        sizes.append(min(2 * sizes[-1], n))
    return sizes


def standard_error(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Standard error of the mean of per-draw values along `axis`, given in draw order (draw i
    is the i-th stratum of t, so neighbours in that order are neighbours in t).

    Collapsed strata: the draws are one per stratum, and the value of a draw varies with t far
    more than within a stratum (the noise of a draw falls several-fold over t, RESULTS.md 3b), so
    the plain sample variance would count that trend as noise. Draws are paired with their
    neighbour in t, (1st, 2nd), (3rd, 4th), ... (an odd last draw is left out), and
    se^2 = mean over pairs of (y_a - y_b)^2 / 2, divided by n: the classical variance estimate of
    a one-draw-per-stratum design (still an overestimate where t's trend shows within a pair).
    inf with fewer than two draws (nothing can be settled on one draw)."""
    v = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    n = v.shape[-1]
    if n < 2:
        return np.full(v.shape[:-1], np.inf)
    m = n // 2 * 2
    d = v[..., 1:m:2] - v[..., 0:m:2]
    return np.sqrt((d * d / 2).mean(-1) / n)


RULES = ("elimination", "decision")
VARIANCES = ("own", "moderated")


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x, x > 0 (Newton's method as limma's `trigammaInverse`, Smyth 2004)."""
    if x > 1e7:
        return 1.0 / np.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        dif = tri * (1 - tri / x) / float(polygamma(2, y))
        y += dif
        if -dif / y < 1e-8:
            break
    return y


@dataclass(frozen=True)
class VariancePrior:
    """A scaled inverse-chi-square prior of the true variances of a pool of comparisons,
    sigma^2 ~ s0sq d0 / chi^2_{d0} (Smyth 2004, limma's moderated t): d0 = inf means every
    comparison has the variance s0sq, d0 = 0 means no pooling (each its own estimate). max_df
    caps the degrees of freedom of a posterior (d times the independent units the prior was
    fitted on: the comparisons of one image share its draws, so they are not independent)."""

    s0sq: float
    d0: float
    max_df: float = np.inf

    def moderate(self, s2: np.ndarray, d: float) -> tuple[np.ndarray, float]:
        """Posterior variances (d0 s0sq + d s2) / (d0 + d) of per-comparison estimates s2 with d
        degrees of freedom each, and their degrees of freedom min(d0 + d, max_df) (s2 itself
        and d when there is no prior: d0 = 0 or s0sq not finite)."""
        s2 = np.asarray(s2, np.float64)
        if self.d0 <= 0 or not np.isfinite(self.s0sq):
            return s2, float(d)
        if np.isinf(self.d0):
            return np.full_like(s2, self.s0sq), float(self.max_df)
        return (self.d0 * self.s0sq + d * s2) / (self.d0 + d), float(min(self.d0 + d, self.max_df))


NO_PRIOR = VariancePrior(np.nan, 0.0)


def fit_variance_prior(s2: np.ndarray, d: float, units: int | None = None) -> VariancePrior:
    """Fit the prior of `VariancePrior` to a pool of per-comparison variance estimates s2, each
    with d degrees of freedom: limma's `fitFDist` without covariate (method of moments on
    log s2: E log s2 = log s0sq + digamma(d/2) - log(d/2) + log(d0/2) - digamma(d0/2), and
    Var log s2 = trigamma(d/2) + trigamma(d0/2)).

    Non-finite s2 (comparisons without two draws) are left out; zero variances are floored at
    1e-5 times the median (as limma does, so one zero does not make the log-variance spread
    infinite). With fewer than two estimates, or a median of zero, there is nothing to pool:
    d0 = 0 (each comparison keeps its own variance). When the spread of log s2 is no more than
    sampling alone gives (all true variances equal) d0 = inf. `units`: the independent units
    (images) behind the pool; the posterior degrees of freedom are capped at d * units."""
    v = np.asarray(s2, np.float64).ravel()
    v = v[np.isfinite(v)]
    max_df = np.inf if units is None else float(d) * max(1, int(units))
    if v.size < 2 or not d > 0:
        return NO_PRIOR
    med = float(np.median(v))
    if not med > 0:
        return NO_PRIOR
    e = np.log(np.maximum(v, 1e-5 * med)) - digamma(d / 2) + np.log(d / 2)
    emean = float(e.mean())
    evar = float(e.var(ddof=1)) - float(polygamma(1, d / 2))
    if evar > 0:
        d0 = 2 * _trigamma_inverse(evar)
        return VariancePrior(float(np.exp(emean + digamma(d0 / 2) - np.log(d0 / 2))), d0, max_df)
    return VariancePrior(float(np.exp(emean)), np.inf, max_df)


def _t_half_width(z: float, df: float) -> float:
    """The Student t quantile of the normal level z with df (float, inf: z) degrees of freedom."""
    if not df > 0:
        return np.inf
    return float(z) if np.isinf(df) else float(student_t.ppf(normal.cdf(z), df))


def _pair_variance(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """`standard_error`'s per-draw variance estimate s2 = n se^2 (n // 2 degrees of freedom)."""
    n = np.shape(values)[axis]
    return standard_error(values, axis=axis) ** 2 * n


@dataclass(frozen=True)
class AdaptiveRule:
    """first: draws of the first pass (n0, >= 2); z: confidence level of the bounds as a normal
    quantile (see `half_width`); top_k: patches per label the ranking keeps; per_image: patches per image;
    patch: patch side in map cells. kind: "elimination" (an image stops once it surely cannot
    enter its label's top-K) or "decision" (an image stops once its top-K membership and its own
    patch selection are decided, by paired differences; see the module docstring); decide: with
    "decision", how many of an image's `per_image` selected patches (best first) must be decided;
    shift: with "decision", a selected patch counts as decided against positions at most `shift`
    cells away on both axes without beating them (-1: patch // 2); variance: with "decision", the
    variance of the paired tests: "own" (each comparison's own `standard_error`, n // 2 degrees
    of freedom) or "moderated" (pooled over the round's comparisons: `fit_variance_prior`)."""

    first: int = 4
    z: float = 2.0
    top_k: int = 1000
    per_image: int = 5
    patch: int = 3
    kind: str = "elimination"
    decide: int = 1
    shift: int = -1
    variance: str = "own"

    def __post_init__(self) -> None:
        if self.first < 2:
            raise ValueError(f"first must be >= 2 (a standard error needs two draws), got {self.first}")
        if not self.z > 0:
            raise ValueError(f"z must be > 0, got {self.z}")
        if self.top_k < 1 or self.per_image < 1 or self.patch < 1:
            raise ValueError(
                f"top_k, per_image and patch must be >= 1, got {self.top_k}, {self.per_image}, {self.patch}"
            )
        if self.kind not in RULES:
            raise ValueError(f"kind must be one of {RULES}, got {self.kind!r}")
        if not 0 <= self.decide <= self.per_image:
            raise ValueError(f"decide must be in [0, per_image = {self.per_image}], got {self.decide}")
        if self.shift < -1:
            raise ValueError(f"shift must be >= 0 (or -1: patch // 2), got {self.shift}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")

    @property
    def tolerance(self) -> int:
        """Cells a decided patch may be off the full-N one (`shift`, or patch // 2)."""
        return self.patch // 2 if self.shift < 0 else self.shift


@dataclass
class AdaptiveResult:
    """Per image (in input order): map (h, w) float32, draws used, the image typicality (the map's
    mean) with its standard error, and the best patch's score with its standard error."""

    maps: list[np.ndarray]
    draws: np.ndarray  # (n,) int64
    typicality: np.ndarray  # (n,) float64
    typicality_se: np.ndarray  # (n,) float64
    top_patch: np.ndarray  # (n,) float64
    top_patch_se: np.ndarray  # (n,) float64
    rounds: int


class _Image:
    """Running state of one image: its draws' terms by draw index."""

    __slots__ = ("settled", "terms")

    def __init__(self) -> None:
        self.terms: dict[int, np.ndarray] = {}
        self.settled = False

    def mean_map(self) -> np.ndarray:
        acc = None
        for d in sorted(self.terms):  # draw order: plain scoring's summation order
            acc = self.terms[d].copy() if acc is None else acc.__iadd__(self.terms[d])
        assert acc is not None
        return acc / np.float32(len(self.terms))


def _patch_stats(
    images: list[_Image], patch: int, k: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """mean (n, k) and standard error (n, k) of each image's k best patches on its current map
    (NaN where fewer fit), the maps, and the boxes (n, k, 4) of those patches (rank's greedy
    selection on the current map; -1 rows where fewer fit)."""
    maps = [im.mean_map() for im in images]
    mu = np.full((len(images), k), np.nan)
    se = np.full((len(images), k), np.nan)
    every = np.full((len(images), k, 4), -1, np.int64)
    for i, (im, m) in enumerate(zip(images, maps)):
        boxes, _ = top_patches(torch.from_numpy(m)[None], min(patch, *m.shape), k)
        every[i] = boxes[0].numpy()
        terms = np.stack([im.terms[d] for d in sorted(im.terms)])  # (n_i, h, w)
        for j, (x0, y0, x1, y1) in enumerate(boxes[0].tolist()):
            if x0 < 0:
                break
            per_draw = terms[:, y0:y1, x0:x1].mean((1, 2), dtype=np.float64)
            mu[i, j] = per_draw.mean()
            se[i, j] = standard_error(per_draw)
    return mu, se, maps, every


def _pooled_draws(image: _Image, patch: int) -> np.ndarray:
    """The image's per-draw patch scores (n_i, Hp, Wp) float64, draws in draw (t) order: entry
    (d, y, x) is the mean of draw d's term over the patch with top-left corner (x, y)."""
    terms = torch.from_numpy(np.stack([image.terms[d] for d in sorted(image.terms)])).double()
    size = min(patch, *terms.shape[1:])
    return torch.nn.functional.avg_pool2d(terms[:, None], size, stride=1)[:, 0].numpy()


def _selection_rivals(pooled: np.ndarray, boxes: np.ndarray, rule: AdaptiveRule) -> Iterator[np.ndarray]:
    """For each of the first `rule.decide` selected patches (boxes (k, 4), best first), the
    per-draw differences (n, rivals) of its score and each rival's: the positions greedy
    suppression leaves it (neither overlapping nor touching patches 0..r-1), except those within
    `rule.tolerance` cells of it."""
    _n, hp, wp = pooled.shape
    size = rule.patch
    ys, xs = np.mgrid[0:hp, 0:wp]
    free = np.ones((hp, wp), bool)
    for r in range(min(rule.decide, len(boxes))):
        x0, y0 = int(boxes[r][0]), int(boxes[r][1])
        if x0 < 0:
            break
        rivals = free & ~((np.abs(ys - y0) <= rule.tolerance) & (np.abs(xs - x0) <= rule.tolerance))
        if rivals.any():
            yield pooled[:, y0, x0][:, None] - pooled[:, rivals]  # (n, rivals)
        free &= ~((np.abs(ys - y0) <= size) & (np.abs(xs - x0) <= size))


def selection_decided(
    pooled: np.ndarray, boxes: np.ndarray, rule: AdaptiveRule, prior: VariancePrior | None = None
) -> bool:
    """Whether an image's greedy selection of its first `rule.decide` patches is decided.

    pooled (n, Hp, Wp): its per-draw patch scores in draw order; boxes (k, 4): the selection on
    its current map (best first). Selected patch r is decided when it beats, with paired
    confidence, every position greedy suppression leaves it as a rival (positions that neither
    overlap nor touch patches 0..r-1) except those within `rule.tolerance` cells of it: per draw,
    the difference of its score and the rival's (the same t and eps for both: the trend over t
    largely cancels), mean over the draws minus `half_width` standard errors of that difference
    (`standard_error`'s pairs) must be > 0 for every rival. With a `prior` (the moderated
    variance, `fit_variance_prior` on the round's comparisons) each difference's variance is the
    posterior one and the half-width the t quantile of its d0 + n // 2 degrees of freedom."""
    n = pooled.shape[0]
    if prior is not None:
        if n < 2:
            return False
        for d in _selection_rivals(pooled, boxes, rule):
            s2, df = prior.moderate(_pair_variance(d, axis=0), n // 2)
            if not ((d.mean(0) - _t_half_width(rule.z, df) * np.sqrt(s2 / n)) > 0).all():
                return False
        return True
    h = half_width(rule.z, n)
    if not np.isfinite(h):
        return False
    for d in _selection_rivals(pooled, boxes, rule):
        if not ((d.mean(0) - h * standard_error(d, axis=0)) > 0).all():
            return False
    return True


def membership(
    values: np.ndarray,
    draws: np.ndarray,
    order: np.ndarray,
    k: int,
    z: float,
    block: int = 64,
    variance: str = "own",
    owners: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which of a label's candidate patches are surely inside, and which surely outside, its top k.

    values (P, N): each patch's per-draw score by draw index (NaN where its image has not had
    that draw); draws (P,): the draws of its image, a prefix of `order` (the visiting order of
    the draws). Patch p surely beats q when the paired difference p - q over the draws both have
    (the first min(draws) of `order`, in draw order: the same t and eps for both images) has a
    lower bound (mean - `half_width` standard errors) above 0. p is surely in when fewer than k
    other patches are not surely beaten by it, surely out when at least k surely beat it. With
    at most k patches every one is in. variance "moderated": the variances of the pairs compared
    over the same m draws are pooled (`fit_variance_prior` on every such pair once, a second pass
    then bounds them; `owners` (P,): each patch's image, the independent units of the cap; each
    patch its own unit when not given). Returns (inside, outside) (P,) bool."""
    p = len(values)
    if p <= k:
        return np.ones(p, bool), np.zeros(p, bool)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    owners = np.arange(p) if owners is None else np.asarray(owners)
    beats = np.zeros((p, p), bool)  # beats[a, b]: a surely above b
    for m in np.unique(draws).tolist():
        if m < 2:
            continue
        cols = np.sort(order[:m])
        x = values[:, cols]
        h = half_width(z, m)
        prior = None
        if variance == "moderated":
            pool = []
            for s in range(0, p, block):
                rows = np.arange(s, min(s + block, p))
                pair = (np.minimum(draws[rows, None], draws[None, :]) == m) & (rows[:, None] < np.arange(p)[None, :])
                if pair.any():
                    pool.append(_pair_variance(x[rows, None, :] - x[None, :, :])[pair])
            units = len(np.unique(owners[draws >= m]))
            prior = fit_variance_prior(np.concatenate(pool) if pool else np.zeros(0), m // 2, units)
        for s in range(0, p, block):
            rows = np.arange(s, min(s + block, p))
            pair = np.minimum(draws[rows, None], draws[None, :]) == m
            if not pair.any():
                continue
            d = x[rows, None, :] - x[None, :, :]  # (b, P, m); NaN only in pairs not of this m
            with np.errstate(invalid="ignore"):
                if prior is None:
                    lower = d.mean(-1) - h * standard_error(d)
                else:
                    s2, df = prior.moderate(_pair_variance(d), m // 2)
                    lower = d.mean(-1) - _t_half_width(z, df) * np.sqrt(s2 / m)
            beats[rows] |= pair & (lower > 0)
    np.fill_diagonal(beats, False)
    inside = (p - 1 - beats.sum(1)) < k
    outside = beats.sum(0) >= k
    return inside, outside


def _selection_priors(
    state: list[_Image], pooled: list[np.ndarray], boxes: np.ndarray, rule: AdaptiveRule
) -> dict[int, VariancePrior]:
    """The moderated variance's prior of the selection tests, per draw count: fitted on every
    rival comparison (`_selection_rivals`) of every unsettled image of the shard with that many
    draws (in a round all unsettled images have the same count), the images as the units."""
    pools: dict[int, list[np.ndarray]] = {}
    images: dict[int, int] = {}
    for i, im in enumerate(state):
        if im.settled:
            continue
        n = len(im.terms)
        images[n] = images.get(n, 0) + 1
        pools.setdefault(n, []).extend(_pair_variance(d, axis=0) for d in _selection_rivals(pooled[i], boxes[i], rule))
    return {n: fit_variance_prior(np.concatenate(v) if v else np.zeros(0), n // 2, images[n]) for n, v in pools.items()}


def _settle_decision(
    state: list[_Image], labels: np.ndarray, boxes: np.ndarray, rule: AdaptiveRule, order: np.ndarray
) -> None:
    """Mark settled the images whose top-K membership and selection are decided (`membership`,
    `selection_decided`; with `rule.variance` "moderated" on variances pooled over the shard's
    comparisons of the round: the selection tests of the unsettled images together, by draw
    count, and apart from them each label's membership pairs, by draw count)."""
    n_draws = len(order)
    pooled = [_pooled_draws(im, rule.patch) for im in state]
    priors = _selection_priors(state, pooled, boxes, rule) if rule.variance == "moderated" else {}
    for lab in np.unique(labels):
        of = np.flatnonzero(labels == lab)
        owner, values, draws = [], [], []
        for i in of.tolist():
            pp = pooled[i]
            cols = np.array(sorted(state[i].terms))
            for x0, y0, _x1, _y1 in boxes[i].tolist():
                if x0 < 0:
                    break
                row = np.full(n_draws, np.nan)
                row[cols] = pp[:, y0, x0]
                owner.append(i)
                values.append(row)
                draws.append(len(cols))
        if not owner:
            continue
        owner_arr = np.array(owner)
        inside, outside = membership(
            np.stack(values), np.array(draws), order, rule.top_k, rule.z, variance=rule.variance, owners=owner_arr
        )
        for i in of.tolist():
            if state[i].settled:
                continue
            mine = owner_arr == i
            if (inside[mine] | outside[mine]).all() and selection_decided(
                pooled[i], boxes[i], rule, priors.get(len(state[i].terms))
            ):
                state[i].settled = True


def half_width(z: float, n: int) -> float:
    """Bound half-width in standard errors for n draws: the Student t quantile of the normal level
    z with n // 2 degrees of freedom (the pairs of `standard_error`); inf below two draws."""
    return _t_half_width(z, n // 2)


def _threshold(lower: np.ndarray, k: int) -> float:
    """The k-th largest finite lower bound (-inf when fewer than k)."""
    vals = lower[np.isfinite(lower)]
    if len(vals) < k:
        return -np.inf
    return float(np.partition(vals, len(vals) - k)[len(vals) - k])


def adaptive_maps(
    estimator: TypicalityEstimator,
    model: NoisePredictor,
    groups: Sequence[tuple[np.ndarray, Callable[[np.ndarray], Tensor]]],
    cond: Tensor,
    rule: AdaptiveRule,
    *,
    chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> AdaptiveResult:
    """Typicality maps of a shard's images by successive elimination (see the module docstring).

    groups: the images in groups of one input shape, each (image indices, a function giving the
    x0 (b, C, h, w) of a subset of those indices, as positions in the group); cond (n,) long: each
    image's label (the threshold is per label). `progress` is called with the draws done so far.
    """
    n = int(cond.shape[0])
    order = draw_order(estimator.draws)
    sizes = round_sizes(rule.first, estimator.draws)
    state = [_Image() for _ in range(n)]
    where = {}  # image index -> (group, position in group)
    for g, (rows, _) in enumerate(groups):
        for p, i in enumerate(np.asarray(rows).tolist()):
            where[i] = (g, p)
    if len(where) != n:
        raise ValueError(f"groups must cover the {n} images exactly once, got {len(where)} distinct indices")
    labels = cond.cpu().numpy()
    done = 0
    prev = 0
    mu = se = None
    maps: list[np.ndarray] = []
    rounds = 0
    for size in sizes:
        active = [i for i in range(n) if not state[i].settled]
        if not active:
            break
        rounds += 1
        new = torch.from_numpy(order[prev:size])
        for g, (_rows, x0_of) in enumerate(groups):
            mine = [i for i in active if where[i][0] == g]
            for s in range(0, len(mine), chunk):
                part = mine[s : s + chunk]
                pos = np.array([where[i][1] for i in part])
                x0 = x0_of(pos)
                terms = estimator.draw_terms(model, x0, cond[part].to(x0.device), new).cpu().numpy()
                for i, tm in zip(part, terms):
                    for d, t in zip(new.tolist(), tm):
                        state[i].terms[d] = t
                done += len(part) * len(new)
                if progress is not None:
                    progress(done)
        prev = size
        mu, se, maps, boxes = _patch_stats(state, rule.patch, rule.per_image)
        if size == sizes[-1]:
            break
        if rule.kind == "decision":
            _settle_decision(state, labels, boxes, rule, order)
            continue
        h = np.array([half_width(rule.z, len(im.terms)) for im in state])[:, None]  # (n, 1)
        upper_top = mu[:, 0] + h[:, 0] * se[:, 0]
        for lab in np.unique(labels):
            of = np.flatnonzero(labels == lab)
            tau = _threshold((mu[of] - h[of] * se[of]).ravel(), rule.top_k)
            for i in of.tolist():
                if not state[i].settled and upper_top[i] < tau:
                    state[i].settled = True
    if mu is None or se is None:  # no image
        empty = np.zeros(0, np.float64)
        return AdaptiveResult([], np.zeros(0, np.int64), empty, empty, empty, empty, 0)
    typ_se = np.array(
        [
            float(standard_error(np.array([im.terms[d].mean(dtype=np.float64) for d in sorted(im.terms)])))
            for im in state
        ],
        np.float64,
    )
    return AdaptiveResult(
        maps=maps,
        draws=np.array([len(im.terms) for im in state], np.int64),
        typicality=np.array([float(m.mean()) for m in maps], np.float64),
        typicality_se=typ_se,
        top_patch=mu[:, 0].astype(np.float64),
        top_patch_se=se[:, 0].astype(np.float64),
        rounds=rounds,
    )
