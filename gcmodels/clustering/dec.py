"""Deep embedded clustering (DEC; Xie, Girshick & Farhadi, 2016) as a scikit-learn estimator.

Kept as our own code: scikit-learn has no deep clustering, and DEC is a small torch model (an
autoencoder and a KL refinement) whose initial centres come from scikit-learn's `KMeans`.

1. Pre-train a fully connected autoencoder f (encoder) / g (decoder) on the standardised
   inputs by the mean squared reconstruction error.
2. Initialise the centres mu_j by k-means on the codes z_i = f(x_i).
3. Refine f and the centres together by minimising KL(P || Q) over mini-batches, where the soft
   assignment is a Student's t kernel

       q_ij = (1 + ||z_i - mu_j||^2 / a)^(-(a+1)/2) / sum_j' (same for j')               (1)

   and the target distribution sharpens Q and normalises by the cluster frequencies
   f_j = sum_i q_ij,

       p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j').                                   (2)

   P is recomputed on all the data every `update_interval` epochs; refinement stops when fewer
   than a fraction `tol` of the hard assignments argmax_j q_ij changed since the last update.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor, nn

from gcmodels.clustering.estimators import KMeans, RandomStateLike
from gcmodels.embedding.autoencoders import MLPAutoencoder, build_seeded, train_autoencoder

__all__ = ["DEC", "soft_assignments", "target_distribution"]

# rows per forward pass when encoding the whole data set
_ENCODE_BATCH = 8192


def soft_assignments(z: Tensor, centers: Tensor, alpha: float = 1.0) -> Tensor:
    """Eq. (1): z (B, m), centers (k, m) -> q (B, k), rows summing to 1."""
    sq = torch.cdist(z, centers).pow(2)  # (B, k)
    q = (1.0 + sq / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: Tensor) -> Tensor:
    """Eq. (2): q (B, k) -> p (B, k), rows summing to 1."""
    weight = q.pow(2) / q.sum(dim=0)
    return weight / weight.sum(dim=1, keepdim=True)


class DEC(ClusterMixin, BaseEstimator):
    """Deep embedded clustering, eqs. (1)-(2).

    Parameters
    ----------
    n_clusters : number of clusters k.
    hidden : widths of the hidden layers of the encoder (the decoder mirrors them).
    latent_dim : dimension m of the embedded space.
    pretrain_epochs : autoencoder pre-training passes over the data.
    epochs : largest number of KL refinement passes.
    batch_size : rows per optimizer step (both phases).
    lr : Adam learning rate (both phases).
    alpha : degrees of freedom a of the Student's t kernel (1).
    update_interval : epochs between recomputations of the target P.
    tol : stop when fewer than this fraction of hard assignments changed between two updates.
    n_init : k-means restarts for the initial centres.
    random_state : int, RandomState or None; seeds initialisation, batch order and k-means.
    device : torch device the networks run on ("cpu", "cuda", ...).

    Attributes
    ----------
    labels_ : (n,) int64 argmax_j q_ij of the training rows after refinement.
    cluster_centers_ : (k, m) float32 centres in the embedded space.
    pretrain_loss_trace_ : list[float], reconstruction MSE per pre-training epoch.
    kl_trace_ : list[float], mean KL(P || Q) per refinement epoch.
    delta_label_trace_ : list[float], fraction of changed assignments at every update of P.
    n_iter_ : int, refinement epochs done. mean_ : (d,), scale_ : float, the standardisation
        (x - mean_) / scale_ (scale_ is the root mean per-feature variance, so that relative
        feature scales are kept). autoencoder_ : the trained `MLPAutoencoder`.
    n_features_in_ : int, d.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        hidden: Sequence[int] = (256, 128),
        latent_dim: int = 10,
        pretrain_epochs: int = 100,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        alpha: float = 1.0,
        update_interval: int = 1,
        tol: float = 1e-3,
        n_init: int = 10,
        random_state: RandomStateLike = None,
        device: str = "cpu",
    ) -> None:
        self.n_clusters = n_clusters
        self.hidden = hidden
        self.latent_dim = latent_dim
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.alpha = alpha
        self.update_interval = update_interval
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.device = device

    def _check_params(self, n_samples: int) -> None:
        name = type(self).__name__
        for param in ("n_clusters", "latent_dim", "batch_size", "update_interval", "n_init"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {param} must be a positive integer, got {value!r}")
        for param in ("pretrain_epochs", "epochs"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: {param} must be a non-negative integer, got {value!r}")
        if any(not isinstance(h, numbers.Integral) or h < 1 for h in self.hidden):
            raise ValueError(f"{name}: hidden must be positive layer widths, got {self.hidden!r}")
        for param in ("lr", "alpha"):
            value = getattr(self, param)
            if not isinstance(value, numbers.Real) or not value > 0:  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__
                raise ValueError(f"{name}: {param} must be a positive number, got {value!r}")
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"{name}: tol must be a non-negative number, got {self.tol!r}")
        if n_samples < self.n_clusters:
            raise ValueError(f"{name}: n_clusters={self.n_clusters} is larger than the number of samples ({n_samples})")

    # ------------------------------------------------------------------ helpers
    def _standardised(self, X: np.ndarray) -> Tensor:
        """(x - mean_) / scale_ as a float32 tensor (n, d) on the CPU (a copy)."""
        return torch.tensor((X - self.mean_) / self.scale_, dtype=torch.float32)

    def _encode(self, Xt: Tensor) -> Tensor:
        """Codes f(x) (n, m) of standardised rows (n, d), on the CPU, without gradients."""
        dev = torch.device(self.device)
        with torch.no_grad():
            parts = [
                self.autoencoder_.encode(Xt[s : s + _ENCODE_BATCH].to(dev)).cpu()
                for s in range(0, Xt.shape[0], _ENCODE_BATCH)
            ]
        return torch.cat(parts) if parts else torch.empty(0, int(self.latent_dim))

    def _q(self, Xt: Tensor) -> Tensor:
        centers = torch.as_tensor(self.cluster_centers_)
        return soft_assignments(self._encode(Xt), centers, float(self.alpha))

    # ------------------------------------------------------------------ estimator API
    def fit(self, X: Any, y: Any = None) -> DEC:
        """Fit on X (n, d); `y` is ignored. Returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n, d = X.shape
        self._check_params(n)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        generator = torch.Generator().manual_seed(seed)
        device = torch.device(self.device)
        k, alpha, batch = int(self.n_clusters), float(self.alpha), int(self.batch_size)

        self.mean_ = X.mean(axis=0, dtype=np.float64)
        var = float(X.var(axis=0, dtype=np.float64).mean())
        self.scale_ = float(np.sqrt(var)) if var > 0 else 1.0
        Xt = self._standardised(X)

        # 1. pre-training
        ae = build_seeded(lambda: MLPAutoencoder(d, int(self.latent_dim), tuple(int(h) for h in self.hidden)), seed)
        self.autoencoder_ = ae.to(device)
        history = (
            train_autoencoder(
                ae, Xt, epochs=int(self.pretrain_epochs), batch_size=batch, lr=float(self.lr), generator=generator
            )
            if self.pretrain_epochs
            else []
        )
        self.pretrain_loss_trace_ = [row["loss"] for row in history]

        # 2. k-means on the codes
        z = self._encode(Xt).numpy().astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(k, n_init=int(self.n_init), random_state=rng).fit(z)
        centers = nn.Parameter(torch.tensor(km.cluster_centers_, dtype=torch.float32, device=device))

        # 3. KL refinement of the encoder and the centres
        opt = torch.optim.Adam([*ae.encoder.parameters(), centers], lr=float(self.lr))
        previous = km.labels_.astype(np.int64)
        p_all: Tensor | None = None
        kl_trace: list[float] = []
        delta_trace: list[float] = []
        n_iter = 0
        for epoch in range(int(self.epochs)):
            if epoch % int(self.update_interval) == 0:
                ae.eval()
                with torch.no_grad():
                    q_all = soft_assignments(self._encode(Xt), centers.detach().cpu(), alpha)
                labels = q_all.argmax(dim=1).numpy().astype(np.int64)
                delta = float((labels != previous).mean())
                previous = labels
                if epoch > 0:
                    delta_trace.append(delta)
                    if delta < float(self.tol):
                        break
                p_all = target_distribution(q_all)
            assert p_all is not None  # set at epoch 0
            ae.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for pos in range(0, n, batch):
                idx = order[pos : pos + batch]
                q = soft_assignments(ae.encode(Xt[idx].to(device)), centers, alpha)
                p = p_all[idx].to(device)
                kl = (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum()
                opt.zero_grad(set_to_none=True)
                (kl / idx.numel()).backward()
                opt.step()
                total += float(kl.detach())
            kl_trace.append(total / n)
            n_iter = epoch + 1
        ae.eval()

        self.cluster_centers_ = centers.detach().cpu().numpy().astype(np.float32)
        self.labels_ = self._q(Xt).argmax(dim=1).numpy().astype(np.int64)
        self.kl_trace_ = kl_trace
        self.delta_label_trace_ = delta_trace
        self.n_iter_ = int(n_iter)
        return self

    def _validated(self, X: Any) -> Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._standardised(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Soft assignments q (1). X: (m, d) -> (m, k) float32, rows summing to 1."""
        return self._q(self._validated(X)).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Hard assignments argmax_j q_ij. X: (m, d) -> (m,) int64."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    def embed(self, X: Any) -> np.ndarray:
        """Codes in the embedded space. X: (m, d) -> (m, latent_dim) float32."""
        return self._encode(self._validated(X)).numpy()
