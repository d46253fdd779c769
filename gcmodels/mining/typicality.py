"""Typicality maps: how much knowing the label helps denoise each pixel.

    T(x | c) = E_{t, eps} [ L_t(x, eps, null) - L_t(x, eps, c) ],   L_t = || eps - eps_theta(x_t, t, .) ||^2

(Siglidis et al. 2024, eq. 2), estimated per pixel with N draws of (t, eps):

- t is stratified over [t_min, t_max] of the model's reference DDPM schedule (one draw per
  stratum), eps is Gaussian. The range is one of signal-to-noise ratios, abar_t / (1 - abar_t), so
  it means the same for every model: a DDPM model (eps or v) is asked at its own timestep t; a
  flow-matching model at the flow level s of equal SNR (see `gcmodels.diffusion.parametrisation`:
  s = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)));
- the squared errors are those of eps, whatever the network predicts: the model reports its
  prediction in eps space (an eps network as it is, a v network's sqrt(abar) v + sqrt(1 - abar) x_t,
  a flow network's x_s + (1 - s) u), so L_t(x, eps, .) = ||eps - eps_hat||^2 is the same quantity
  for every parametrisation and maps of different models are comparable;
- the same N draws are used for every image (common random numbers across images, as in the
  paper's per-image seed reset), and the conditional and null branches share each draw and run
  in one batched forward pass (common random numbers across branches);
- the per-draw squared errors are reduced on the device, as they come, to one (H, W) map per
  image: the (N, 2, C, H, W) loss tensor is never materialised.

Cotypicality (our extension of the paper, which scores each image under its own label only)
scores every image under every label of a list: each draw's x_t goes through the UNet once with
the null label and once with each of the L labels, in one batched forward, so the L maps of an
image share the null branch and the (t, eps) draws ((L + 1) inputs per draw instead of 2L).

Label contrast (our extension, `score.contrast`): an image's typicality under its own label minus
the mean of its typicalities under the other labels,

    C(x | c) = T(x | c) - mean_{c' != c} T(x | c') = E_{t, eps} [ mean_{c' != c} L_t(x, eps, c') - L_t(x, eps, c) ],

in which the null branch cancels. T is large wherever both losses are large (a hard region every
label reconstructs alike: a distractor on every image, an object's body, the background);
C is zero there whatever the difficulty, and large where the own label denoises better than the
others, which is the question "what is typical of this label" asks of a collection whose labels
share an object. It is read from the cotypicality maps of the same draws (`label_contrast`), at
L + 1 UNet inputs per draw, or estimated at the cost of T itself (2 inputs per draw:
`TypicalityEstimator.contrast_maps`) by giving each draw one rival label in place of the null one,
the rivals cycled over the draws and each rival's draws weighted so that every rival counts
1 / (L - 1) (see `rival_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["NoisePredictor", "TypicalityEstimator", "label_contrast", "rival_schedule", "typicality_from_losses"]


class NoisePredictor(Protocol):
    """What the estimator needs from a conditional diffusion model (index 0 = the null label):
    the reference DDPM forward process and eps-space predictions on it (every
    `gcmodels.diffusion.ConditionalDiffusion` is one)."""

    alphas_cumprod: Tensor  # (T,)

    @property
    def num_train_timesteps(self) -> int: ...

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor: ...

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...


def label_contrast(values: Tensor, own: Tensor) -> Tensor:
    """The label contrast of cotypicality values (B, L, ...) (maps (B, L, H, W), or per-draw image
    typicalities (B, L, N)) for the images' own label columns own (B,) long (0-based, into L)
    -> (B, ...): ``values[b, own[b]]`` minus the mean of ``values[b, j]`` over the other columns j.
    Linear in `values`, so the contrast of per-draw terms averages to the contrast of the maps.
    Needs L >= 2 (with one label there is nothing to contrast with)."""
    if values.dim() < 2:
        raise ValueError(f"values must be (B, L, ...), got shape {tuple(values.shape)}")
    b, n_labels = values.shape[:2]
    if n_labels < 2:
        raise ValueError("label contrast needs at least 2 labels: with one there is no other label to compare with")
    own = own.to(device=values.device, dtype=torch.long)
    if own.shape != (b,) or bool(((own < 0) | (own >= n_labels)).any()):
        raise ValueError(f"own must be ({b},) column indices in [0, {n_labels}), got {own.tolist()}")
    index = own.view(b, 1, *([1] * (values.dim() - 2))).expand(b, 1, *values.shape[2:])
    mine = values.gather(1, index)[:, 0]
    others = (values.sum(1) - mine) / (n_labels - 1)
    return mine - others


def rival_schedule(own: Tensor, n_labels: int, draws: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The rival label of each draw of images of own labels own (B,) long (1-based, the model's
    label indices 1..n_labels) for the cycled label contrast -> (rivals (B, N) long, weights (B, N)
    float64).

    The L - 1 other labels are put in an order drawn from `seed` for each own label (the same for
    every image of a label: images of one label are compared on the same rivals, common random
    numbers) and cycled over the N draws: draw d of an image of label c is against its order's
    (d mod (L - 1))-th rival. Weights make every rival that gets draws count alike: a draw against
    rival r weighs N / (R n_r), n_r the draws of rival r and R the rivals with draws (R = L - 1
    when N >= L - 1; otherwise the first N rivals of the order), so that the mean of weight x term
    over the N draws is the mean over rivals of each rival's mean term. When L - 1 divides N
    every weight is 1."""
    if n_labels < 2:
        raise ValueError("label contrast needs at least 2 labels: with one there is no other label to compare with")
    own = own.to(torch.long).cpu()
    if own.dim() != 1 or bool(((own < 1) | (own > n_labels)).any()):
        raise ValueError(f"own must be (B,) label indices in [1, {n_labels}], got {own.tolist()}")
    g = torch.Generator().manual_seed(seed)
    orders = torch.empty(n_labels + 1, n_labels - 1, dtype=torch.long)
    for c in range(1, n_labels + 1):  # every label's order, drawn in label order (independent of the batch)
        others = torch.tensor([j for j in range(1, n_labels + 1) if j != c], dtype=torch.long)
        orders[c] = others[torch.randperm(n_labels - 1, generator=g)]
    slot = torch.arange(draws) % (n_labels - 1)  # (N,) which place of the order each draw takes
    counts = torch.bincount(slot, minlength=n_labels - 1).double()  # draws per place
    used = int((counts > 0).sum())
    weight = draws / (used * counts[slot])  # (N,)
    return orders[own][:, slot], weight.expand(own.shape[0], draws).clone()


def typicality_from_losses(loss_null: Tensor, loss_cond: Tensor) -> Tensor:
    """The typicality integrand L(null) - L(c), elementwise (eq. 2 before the expectation)."""
    return loss_null - loss_cond


@dataclass(frozen=True)
class TypicalityEstimator:
    """Monte-Carlo estimator of per-pixel typicality maps.

    draws: N draws of (t, eps) per image; t_min, t_max: range of t as fractions of the model's
    reference DDPM schedule, i.e. a range of signal-to-noise ratios (see the module docstring);
    batch_size: UNet inputs per forward pass (the two branches of a draw count as two; with
    cotypicality over L labels a draw counts as L + 1);
    seed: seed of the draws (the same draws for every image and every call).
    """

    draws: int = 16
    t_min: float = 0.1
    t_max: float = 0.7
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (one draw is two UNet inputs), got {self.batch_size}")

    def sample_draws(self, num_train_timesteps: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The N draws: timesteps (N,) long, stratified over [t_min, t_max], and noise (N, *shape)."""
        g = torch.Generator().manual_seed(self.seed)
        u = torch.rand(self.draws, generator=g, dtype=torch.float64)
        frac = self.t_min + (torch.arange(self.draws, dtype=torch.float64) + u) * (self.t_max - self.t_min) / self.draws
        t = (frac * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
        eps = torch.randn((self.draws, *shape), generator=g, dtype=torch.float32)
        return t, eps

    @torch.inference_mode()
    def maps(
        self,
        model: NoisePredictor,
        x0: Tensor,
        cond: Tensor,
        *,
        progress: Callable[[int], None] | None = None,
        draw_means: Tensor | None = None,
    ) -> Tensor:
        """Typicality maps of images x0 (B, C, H, W) under labels cond (B,) long -> (B, H, W) float32.

        Channels are averaged; the map is in the model's space (pixels for a pixel model).
        `progress`, if given, is called with the number of images finished after each forward.
        `draw_means`, if given ((B, N) float64), receives each draw's spatial mean of the map's
        integrand (the image typicality of that draw alone: their spread gives the standard
        error, see `gcmodels.mining.adaptive.standard_error`); the maps do not change.
        """
        record = self._own_label_record(x0, cond, draw_means)
        if bool((cond == 0).any()):
            raise ValueError("typicality under the null label (index 0) is zero by definition; pass real labels")
        return self._maps_under(model, x0, cond[:, None], progress, record)[:, 0]

    def _own_label_record(self, x0: Tensor, cond: Tensor, draw_means: Tensor | None) -> Tensor | None:
        """Check the inputs of a map under each image's own label (`maps`, `contrast_maps`): x0
        (B, C, H, W), cond (B,), draw_means None or (B, N); the (B, 1, N) view of draw_means that
        `_maps_under` fills."""
        if x0.dim() != 4:
            raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
        if cond.shape != (x0.shape[0],):
            raise ValueError(f"cond must be (B,) = ({x0.shape[0]},), got {tuple(cond.shape)}")
        if draw_means is None:
            return None
        if tuple(draw_means.shape) != (x0.shape[0], self.draws):
            raise ValueError(
                f"draw_means must be (B, N) = ({x0.shape[0]}, {self.draws}), got {tuple(draw_means.shape)}"
            )
        return draw_means.view(x0.shape[0], 1, self.draws)

    @torch.inference_mode()
    def cotypicality_maps(
        self,
        model: NoisePredictor,
        x0: Tensor,
        labels: Tensor,
        *,
        progress: Callable[[int], None] | None = None,
        draw_means: Tensor | None = None,
    ) -> Tensor:
        """Typicality maps of every image x0 (B, C, H, W) under every label of labels (L,) long
        -> (B, L, H, W) float32: ``out[b, j] = T(x0[b] | labels[j])`` per pixel (eq. 2).

        Each (image, draw) pair costs L + 1 UNet inputs, not 2L: the null branch is evaluated once
        and shared by the L labels, and all L + 1 branches see the same x_t (the same (t, eps) as
        `maps` uses). Forwards hold at most `batch_size` inputs (a pair whose L + 1 inputs exceed
        `batch_size` is split over several forwards).

        ``out[:, j]`` equals ``maps(model, x0, labels[j].expand(B))`` up to float rounding: the
        same draws, the same arithmetic and the same summation order over draws are used, so the
        two are bit-for-bit identical for any model whose per-input output does not depend on
        the other inputs of the batch; a real UNet may differ in the last bits because its
        kernels see differently sized batches.
        `progress`, if given, is called with the number of images finished after each forward.
        `draw_means` ((B, L, N) float64), if given, receives each draw's image typicality (as in `maps`).
        """
        if x0.dim() != 4:
            raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(
                f"labels must be a non-empty (L,) tensor of label indices, got shape {tuple(labels.shape)}"
            )
        if bool((labels == 0).any()):
            raise ValueError("typicality under the null label (index 0) is zero by definition; pass real labels")
        conds = labels.to(torch.long).view(1, -1).expand(x0.shape[0], -1)
        if draw_means is not None and tuple(draw_means.shape) != (x0.shape[0], labels.numel(), self.draws):
            raise ValueError(f"draw_means must be (B, L, N), got {tuple(draw_means.shape)}")
        return self._maps_under(model, x0, conds, progress, draw_means)

    @torch.inference_mode()
    def contrast_maps(
        self,
        model: NoisePredictor,
        x0: Tensor,
        cond: Tensor,
        n_labels: int,
        *,
        progress: Callable[[int], None] | None = None,
        draw_means: Tensor | None = None,
    ) -> Tensor:
        """Label-contrast maps of images x0 (B, C, H, W) under their labels cond (B,) long, among
        the model's labels 1..n_labels -> (B, H, W) float32, at the cost of `maps` (2 UNet inputs
        per draw): each draw's second branch is a rival label (`rival_schedule`) instead of the
        null label, and the map is the weighted mean over draws of L(rival) - L(c). It estimates
        what ``label_contrast`` reads from the cotypicality maps, with one rival per draw instead
        of all L - 1: the same expectation when N >= L - 1 (otherwise the mean over the first N
        rivals of the label's order), more variance. `draw_means` ((B, N) float64) receives each
        draw's weighted image-level term (their mean is the map's mean)."""
        record = self._own_label_record(x0, cond, draw_means)
        rivals, weights = rival_schedule(cond, n_labels, self.draws, self.seed)
        return self._maps_under(model, x0, cond[:, None], progress, record, rivals, weights)[:, 0]

    def _maps_under(
        self,
        model: NoisePredictor,
        x0: Tensor,
        conds: Tensor,
        progress: Callable[[int], None] | None,
        record: Tensor | None = None,
        reference: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Maps of x0 (B, C, H, W) under K labels per image, conds (B, K) long (no null) -> (B, K, H, W).

        Units of work are (image, draw) pairs, image-major; a group of P pairs is one batch of
        (K + 1) P UNet inputs laid out branch-major: label 0 of every pair, ..., label K-1 of
        every pair, then the reference label of every pair (for K = 1: [conditional, null]).
        The reference is the null label unless `reference` (B, N) long gives one per (image,
        draw); `weights` (B, N) float64, if given, weighs each draw's term (1 = plain mean).
        """
        b, _, h, w = x0.shape
        k = conds.shape[1]
        device = x0.device
        t, eps = self.sample_draws(model.num_train_timesteps, tuple(x0.shape[1:]))
        t, eps, conds = t.to(device), eps.to(device, x0.dtype), conds.to(device)
        out = torch.zeros(b, k, h, w, dtype=torch.float32, device=device)
        pairs = max(1, self.batch_size // (k + 1))
        img_of = torch.arange(b, device=device).repeat_interleave(self.draws)  # (B*N,)
        draw_of = torch.arange(self.draws, device=device).repeat(b)  # (B*N,)
        null = torch.zeros(pairs, dtype=torch.long, device=device)
        if reference is not None:
            reference = reference.to(device)
        if weights is not None:
            weights = weights.to(device, torch.float32)
        for start in range(0, b * self.draws, pairs):
            i = img_of[start : start + pairs]
            d = draw_of[start : start + pairs]
            p = i.shape[0]
            e = eps[d]  # (P, C, H, W)
            x_t = model.add_noise(x0[i], e, t[d])
            ref = null[:p] if reference is None else reference[i, d]
            branch_cond = torch.cat([conds[i].t().reshape(-1), ref])  # ((K+1) P,)
            pred = self._predict(model, x_t.repeat(k + 1, 1, 1, 1), t[d].repeat(k + 1), branch_cond)
            err = (pred.float() - e.repeat(k + 1, 1, 1, 1).float()).pow_(2).mean(1)  # ((K+1) P, H, W)
            err = err.view(k + 1, p, h, w)
            term = typicality_from_losses(err[k], err[:k]).transpose(0, 1)  # (P, K, H, W)
            if weights is not None:
                term = term * weights[i, d].view(p, 1, 1, 1)
            out.index_add_(0, i, term)
            if record is not None:  # (B, K, N): each draw's image typicality, for the standard error
                record[i.cpu(), :, d.cpu()] = term.mean((2, 3)).double().cpu()
            if progress is not None:
                progress((start + p) // self.draws)
        return out.div_(self.draws)

    @torch.inference_mode()
    def draw_terms(self, model: NoisePredictor, x0: Tensor, cond: Tensor, draws: Tensor) -> Tensor:
        """The integrand of the maps of images x0 (B, C, H, W) under labels cond (B,) for the draws
        of index `draws` (D,) long (of the N of `sample_draws`), one map per draw, not averaged ->
        (B, D, H, W) float32. Each term is computed with the arithmetic of `maps`, so summing an
        image's N terms in draw order from zero and dividing by N gives its `maps` map bit for bit
        (for a model whose per-input output does not depend on the rest of the batch)."""
        if x0.dim() != 4 or cond.shape != (x0.shape[0],):
            raise ValueError(f"need x0 (B, C, H, W) and cond (B,), got {tuple(x0.shape)} and {tuple(cond.shape)}")
        if bool((cond == 0).any()):
            raise ValueError("typicality under the null label (index 0) is zero by definition; pass real labels")
        b, _, h, w = x0.shape
        device = x0.device
        t, eps = self.sample_draws(model.num_train_timesteps, tuple(x0.shape[1:]))
        t, eps, cond = t.to(device), eps.to(device, x0.dtype), cond.to(device)
        draws = draws.to(device=device, dtype=torch.long)
        nd = draws.shape[0]
        out = torch.zeros(b, nd, h, w, dtype=torch.float32, device=device)
        pairs = max(1, self.batch_size // 2)
        img_of = torch.arange(b, device=device).repeat_interleave(nd)
        slot_of = torch.arange(nd, device=device).repeat(b)
        null = torch.zeros(pairs, dtype=torch.long, device=device)
        for start in range(0, b * nd, pairs):
            i = img_of[start : start + pairs]
            j = slot_of[start : start + pairs]
            d = draws[j]
            p = i.shape[0]
            e = eps[d]
            x_t = model.add_noise(x0[i], e, t[d])
            pred = self._predict(model, x_t.repeat(2, 1, 1, 1), t[d].repeat(2), torch.cat([cond[i], null[:p]]))
            err = (pred.float() - e.repeat(2, 1, 1, 1).float()).pow_(2).mean(1).view(2, p, h, w)
            out[i, j] = typicality_from_losses(err[1], err[0])
        return out

    def _predict(self, model: NoisePredictor, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps predictions in forwards of at most `batch_size` inputs (one forward when they fit)."""
        n = x_t.shape[0]
        if n <= self.batch_size:
            return model.predict_noise(x_t, t, cond)
        return torch.cat(
            [
                model.predict_noise(
                    x_t[s : s + self.batch_size], t[s : s + self.batch_size], cond[s : s + self.batch_size]
                )
                for s in range(0, n, self.batch_size)
            ]
        )
