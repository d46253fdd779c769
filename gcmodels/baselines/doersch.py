"""The classic baseline: discriminative patch mining after Doersch et al. 2012 ("What makes Paris
look like Paris?", SIGGRAPH), for comparison with typicality mining.

Descriptors: HOG computed once per image on a grid of cell_size x cell_size cells (unsigned
gradients of the strongest colour channel, `bins` orientation bins with linear vote
interpolation; every cell histogram normalised by the energy of each of the four 2 x 2 blocks it
belongs to and clipped at 0.2, as in Dalal & Triggs / Felzenszwalb et al.), plus the mean colour
of every cell (the paper's HOG + colour descriptor). A patch is a window of patch_cells x
patch_cells cells at every cell position (stride one cell), at every scale of `scales`; its
descriptor is the L2-normalised HOG of its cells followed by color_weight x its centred cell
colours.

Mining, per label (the positive set) against all other labels (the negative set), each split
into `folds` disjoint folds of images:

1. seeding: `candidates` random patches of positive fold-0 images (among the half with the most
   gradient energy); each is ranked by the share of positive images among its `neighbours`
   nearest images of fold 0 (an image's distance = its nearest patch's; the candidate's own image
   excluded); the best `detectors` candidates whose neighbours' patches do not overlap those of
   an already chosen one by more than `redundancy` are kept;
2. rounds of training (cross-validation as in the paper, to avoid overfitting): round r trains
   a linear SVM (label vs rest, sklearn ``LinearSVC``) on the current positives and negatives of
   fold r mod folds, then detects in fold (r + 1) mod folds: its `neighbours` best-scoring
   positive images' best patches are the next positives, and the `hard_negatives` best-scoring
   negative patches join the negatives (hard-negative mining);
3. ranking: each detector's purity is the share of positive images among its top
   min(`top`, positives in that fold) detections (best patch per image) in the fold after the
   last round; detectors are ranked by purity (then mean score of those detections).

Output: the ranked detectors and, for the best `keep` detectors of each label, the best patch of
every image with its score (boxes in pixels of the input images).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

__all__ = ["DiscriminativeMiner", "MinedDetectors", "hog_cells", "patch_descriptors"]

_CLIP = 0.2  # HOG clipping of normalised histogram values
_EPS = 1e-6


def hog_cells(images: np.ndarray, cell_size: int, bins: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HOG of every cell of float images (N, H, W, 3) in [0, 1].

    Returns hog (N, Hc, Wc, 4 bins) float32 (each cell's histogram normalised by each of its four
    2 x 2 blocks, clipped at 0.2), colour (N, Hc, Wc, 3) float32 (mean RGB of the cell) and energy
    (N, Hc, Wc) float32 (summed gradient magnitude of the cell); Hc = H // cell_size, likewise Wc
    (pixels beyond the last full cell are ignored).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    n, h, w, _ = images.shape
    hc, wc = h // cell_size, w // cell_size
    if hc < 2 or wc < 2:
        raise ValueError(f"images of {h}x{w} hold fewer than 2x2 cells of {cell_size} pixels")
    gx = np.zeros_like(images)
    gy = np.zeros_like(images)
    gx[:, :, 1:-1] = images[:, :, 2:] - images[:, :, :-2]
    gy[:, 1:-1] = images[:, 2:] - images[:, :-2]
    mag = np.hypot(gx, gy)  # (N, H, W, 3)
    ch = mag.argmax(-1)[..., None]
    mag = np.take_along_axis(mag, ch, -1)[..., 0]
    gx = np.take_along_axis(gx, ch, -1)[..., 0]
    gy = np.take_along_axis(gy, ch, -1)[..., 0]
    theta = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
    pos = theta / np.pi * bins - 0.5
    lo = np.floor(pos)
    frac = (pos - lo).astype(np.float32)
    lo = np.mod(lo.astype(np.int64), bins)
    hi = np.mod(lo + 1, bins)
    hh, ww = hc * cell_size, wc * cell_size
    # cell index of every pixel, flattened with the bin: ((n * Hc + cy) * Wc + cx) * bins + bin
    cy = (np.arange(hh) // cell_size)[:, None]
    cx = (np.arange(ww) // cell_size)[None, :]
    base = ((np.arange(n)[:, None, None] * hc + cy) * wc + cx) * bins  # (N, hh, ww)
    m = mag[:, :hh, :ww]
    f = frac[:, :hh, :ww]
    hist = np.bincount((base + lo[:, :hh, :ww]).ravel(), (m * (1 - f)).ravel(), minlength=n * hc * wc * bins)
    hist += np.bincount((base + hi[:, :hh, :ww]).ravel(), (m * f).ravel(), minlength=n * hc * wc * bins)
    hist = hist.reshape(n, hc, wc, bins).astype(np.float32)
    energy = (hist**2).sum(-1)  # (N, Hc, Wc)
    block = energy[:, :-1, :-1] + energy[:, 1:, :-1] + energy[:, :-1, 1:] + energy[:, 1:, 1:]  # (N, Hc-1, Wc-1)
    norm = np.sqrt(np.pad(block, ((0, 0), (1, 1), (1, 1)), mode="edge") + _EPS)  # (N, Hc+1, Wc+1)
    parts = [np.minimum(hist / norm[:, dy : dy + hc, dx : dx + wc, None], _CLIP) for dy in (0, 1) for dx in (0, 1)]
    hog = np.concatenate(parts, -1).astype(np.float32)
    colour = images[:, :hh, :ww].reshape(n, hc, cell_size, wc, cell_size, 3).mean((2, 4)).astype(np.float32)
    cell_energy = mag[:, :hh, :ww].reshape(n, hc, cell_size, wc, cell_size).sum((2, 4)).astype(np.float32)
    return hog, colour, cell_energy


def patch_descriptors(
    images: np.ndarray,
    *,
    cell_size: int,
    patch_cells: int,
    scales: Sequence[float] = (1.0,),
    bins: int = 9,
    color_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HOG + colour descriptors of every patch of uint8 images (N, H, W, 3), all of one size.

    Returns descriptors (N, P, D) float32, boxes (P, 4) int64 (x0, y0, x1, y1) in pixels of the
    input images (the same for every image) and energy (N, P) float32 (gradient energy of the
    patch, for seeding). P counts the patch_cells x patch_cells windows of cells at every cell
    position of every scale.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    descs, boxes, energies = [], [], []
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"scales must be positive, got {scale}")
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        if (sh, sw) == (h, w):
            scaled = images
        else:
            scaled = np.stack(
                [np.asarray(Image.fromarray(im).resize((sw, sh), Image.Resampling.BILINEAR)) for im in images]
            )
        if sh // cell_size < patch_cells or sw // cell_size < patch_cells:
            raise ValueError(
                f"a patch of {patch_cells}x{patch_cells} cells of {cell_size} px does not fit images of {sw}x{sh} (scale {scale})"
            )
        hog, colour, energy = hog_cells(scaled.astype(np.float32) / 255.0, cell_size, bins)
        win = np.lib.stride_tricks.sliding_window_view
        k = patch_cells
        hw = win(hog, (k, k), axis=(1, 2))  # (N, Hp, Wp, F, k, k)
        hp, wp = hw.shape[1:3]
        hog_d = hw.reshape(n, hp * wp, -1)
        hog_d = hog_d / np.maximum(np.linalg.norm(hog_d, axis=-1, keepdims=True), _EPS)
        col_d = win(colour, (k, k), axis=(1, 2)).reshape(n, hp * wp, -1) - 0.5
        descs.append(np.concatenate([hog_d, color_weight * col_d], -1).astype(np.float32))
        energies.append(win(energy, (k, k), axis=(1, 2)).sum((-1, -2)).reshape(n, hp * wp))
        ys, xs = np.divmod(np.arange(hp * wp), wp)
        side = k * cell_size
        bx = np.stack([xs * cell_size, ys * cell_size, xs * cell_size + side, ys * cell_size + side], 1) / np.array(
            [sw / w, sh / h, sw / w, sh / h]
        )
        b = np.rint(bx).astype(np.int64)
        b[:, [2, 3]] = np.minimum(b[:, [2, 3]], [w, h])
        boxes.append(b)
    return np.concatenate(descs, 1), np.concatenate(boxes, 0), np.concatenate(energies, 1).astype(np.float32)


@dataclass(frozen=True)
class MinedDetectors:
    """What `DiscriminativeMiner.mine` found.

    detectors: one row per trained detector: ``label``, ``detector`` (rank within the label,
    0 = purest), ``purity`` (share of positives among its top held-out detections),
    ``top_score`` (mean score of those detections).
    detections: for the best `keep` detectors of each label, one row per (detector, image):
    ``label``, ``detector``, ``image`` (index into the input), ``image_label``, ``x0``, ``y0``,
    ``x1``, ``y1`` (the image's best-scoring patch, input pixels), ``score`` (SVM decision
    value), ``rank`` (0 = the detector's highest-scoring image).
    seconds: wall time per phase (``descriptors``, ``seeding``, ``training``, ``detection``,
    ``total``).
    """

    detectors: pd.DataFrame
    detections: pd.DataFrame
    seconds: dict[str, float]

    def top_detections(self, n: int) -> pd.DataFrame:
        """The n highest-scoring detections of every kept detector (the paper's figures)."""
        return self.detections[self.detections["rank"] < n].reset_index(drop=True)

    def best_per_image(self, detectors: int = 1) -> pd.DataFrame:
        """For every image of a label, its highest-scoring patch among that label's best
        `detectors` detectors (scores of one label's detectors compared as they are)."""
        d = self.detections
        d = d[(d["detector"] < detectors) & (d["image_label"] == d["label"])]
        d = d.sort_values(["image", "score"], ascending=[True, False], kind="stable")
        return d.drop_duplicates("image").reset_index(drop=True)


@dataclass(frozen=True)
class DiscriminativeMiner:
    """Doersch et al. 2012 discriminative patch mining (see the module docstring).

    cell_size, patch_cells, scales, bins, color_weight: the descriptor (patch side =
    cell_size x patch_cells pixels at scale 1); candidates: random seed patches per label;
    neighbours: k of the k-NN seeding, also the positives per round; detectors: detectors trained
    per label; redundancy: largest share of overlapping neighbour patches between two kept
    seeds; rounds, folds: training rounds and data folds; negatives: random negative patches of
    the first round; hard_negatives: negative patches added per round; svm_c: the SVM's C;
    top: detections judged for the purity; keep: detectors per label whose detections are
    returned; seed: seed of all sampling.
    """

    cell_size: int = 4
    patch_cells: int = 4
    scales: tuple[float, ...] = (1.0,)
    bins: int = 9
    color_weight: float = 0.5
    candidates: int = 100
    neighbours: int = 10
    detectors: int = 10
    redundancy: float = 0.5
    rounds: int = 3
    folds: int = 4
    negatives: int = 1000
    hard_negatives: int = 500
    svm_c: float = 0.1
    top: int = 50
    keep: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "cell_size",
            "patch_cells",
            "bins",
            "candidates",
            "neighbours",
            "detectors",
            "rounds",
            "negatives",
            "top",
            "keep",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if not self.svm_c > 0:
            raise ValueError(f"svm_c must be positive, got {self.svm_c}")
        if not 0.0 <= self.redundancy <= 1.0:
            raise ValueError(f"redundancy must be in [0, 1], got {self.redundancy}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")

    @property
    def patch_size(self) -> int:
        """Patch side in pixels at scale 1."""
        return self.cell_size * self.patch_cells

    def mine(self, images: np.ndarray, labels: Sequence[str]) -> MinedDetectors:
        """Mine discriminative patches of every label of uint8 images (N, H, W, 3) labelled
        labels (N,) (every label against all the others)."""
        t_start = time.perf_counter()
        label_array = np.asarray(labels, dtype=object)
        images = np.asarray(images)
        if label_array.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {label_array.shape}")
        vocab = sorted(set(label_array.tolist()), key=str)
        if len(vocab) < 2:
            raise ValueError(f"discriminative mining needs at least two labels, got {vocab!r}")
        desc, boxes, energy = patch_descriptors(
            images,
            cell_size=self.cell_size,
            patch_cells=self.patch_cells,
            scales=self.scales,
            bins=self.bins,
            color_weight=self.color_weight,
        )  # (N, P, D), (P, 4), (N, P)
        seconds = {"descriptors": time.perf_counter() - t_start, "seeding": 0.0, "training": 0.0, "detection": 0.0}
        rng = np.random.default_rng(self.seed)
        overlap = _box_overlap(boxes)  # (P, P) bool
        det_rows, hit_rows = [], []
        for label in vocab:
            pos = np.flatnonzero(label_array == label)
            neg = np.flatnonzero(label_array != label)
            if pos.size < self.folds:
                raise ValueError(f"label {label!r} has {pos.size} images, fewer than folds={self.folds}")
            pos_f = np.array_split(rng.permutation(pos), self.folds)
            neg_f = np.array_split(rng.permutation(neg), self.folds)
            t0 = time.perf_counter()
            seeds = self._seed(desc, energy, overlap, pos_f[0], neg_f[0], rng)
            t1 = time.perf_counter()
            seconds["seeding"] += t1 - t0
            trained = [self._train(desc, pos_f, neg_f, s, rng) for s in seeds]
            t2 = time.perf_counter()
            seconds["training"] += t2 - t1
            order = sorted(range(len(trained)), key=lambda j: (-trained[j][1], -trained[j][2], j))
            for rank, j in enumerate(order):
                _, purity, top_score = trained[j]
                det_rows.append({"label": label, "detector": rank, "purity": purity, "top_score": top_score})
            for rank, j in enumerate(order[: self.keep]):
                w, b = trained[j][0]
                scores = desc @ w + b  # (N, P)
                best = scores.argmax(1)
                s = scores[np.arange(len(best)), best]
                img_rank = np.empty(len(s), dtype=np.int64)
                img_rank[np.argsort(-s, kind="stable")] = np.arange(len(s))
                bb = boxes[best]
                hit_rows.append(
                    pd.DataFrame(
                        {
                            "label": label,
                            "detector": rank,
                            "image": np.arange(len(s)),
                            "image_label": label_array,
                            "x0": bb[:, 0],
                            "y0": bb[:, 1],
                            "x1": bb[:, 2],
                            "y1": bb[:, 3],
                            "score": s,
                            "rank": img_rank,
                        }
                    )
                )
            seconds["detection"] += time.perf_counter() - t2
        seconds["total"] = time.perf_counter() - t_start
        detections = pd.concat(hit_rows, ignore_index=True).sort_values(["label", "detector", "rank"], kind="stable")
        return MinedDetectors(
            detectors=pd.DataFrame(det_rows), detections=detections.reset_index(drop=True), seconds=seconds
        )

    # ------------------------------------------------------------------ private steps
    def _seed(
        self,
        desc: np.ndarray,
        energy: np.ndarray,
        overlap: np.ndarray,
        pos0: np.ndarray,
        neg0: np.ndarray,
        rng: np.random.Generator,
    ) -> list[np.ndarray]:
        """Seed detectors from fold 0: returns, per kept seed, its initial positive descriptors (k+1, D)."""
        e = energy[pos0]  # (n_pos0, P)
        strong = np.argwhere(e >= np.median(e))  # (m, 2) rows (image in pos0, patch)
        pick = strong[rng.choice(len(strong), size=min(self.candidates, len(strong)), replace=False)]
        cand = desc[pos0[pick[:, 0]], pick[:, 1]]  # (n_c, D)
        pool = np.concatenate([pos0, neg0])
        is_pos = np.r_[np.ones(pos0.size, bool), np.zeros(neg0.size, bool)]
        # nearest patch of every pool image to every candidate: squared distances (n_c, n_pool, P)
        pd_ = desc[pool]  # (n_pool, P, D)
        d2 = (cand**2).sum(1)[:, None, None] - 2 * np.einsum("cd,npd->cnp", cand, pd_) + (pd_**2).sum(-1)[None]
        nearest = d2.argmin(2)  # (n_c, n_pool)
        dist = np.take_along_axis(d2, nearest[..., None], 2)[..., 0]
        dist[np.arange(len(pick)), pick[:, 0]] = np.inf  # a candidate's own image is not a neighbour
        k = min(self.neighbours, pool.size - 1)
        nn = np.argsort(dist, 1, kind="stable")[:, :k]  # (n_c, k) pool positions
        purity = is_pos[nn].mean(1)
        order = np.lexsort((np.take_along_axis(dist, nn, 1).mean(1), -purity))
        kept: list[np.ndarray] = []
        kept_sets: list[tuple[np.ndarray, np.ndarray]] = []
        for c in order:
            imgs, patches = pool[nn[c]], nearest[c, nn[c]]
            if any(_shared(imgs, patches, ki, kp, overlap) > self.redundancy for ki, kp in kept_sets):
                continue
            kept_sets.append((imgs, patches))
            posn = nn[c][is_pos[nn[c]]]
            kept.append(np.concatenate([cand[c : c + 1], pd_[posn, nearest[c, posn]]]))
            if len(kept) == self.detectors:
                break
        return kept

    def _train(
        self,
        desc: np.ndarray,
        pos_f: list[np.ndarray],
        neg_f: list[np.ndarray],
        positives: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[tuple[np.ndarray, float], float, float]:
        """Rounds of SVM training with cross-validation folds; returns ((w, b), purity, top score)."""
        n_fold = self.folds
        neg_imgs = neg_f[0]
        p = desc.shape[1]
        flat = rng.choice(neg_imgs.size * p, size=min(self.negatives, neg_imgs.size * p), replace=False)
        negatives = desc[neg_imgs[flat // p], flat % p]
        w = b = None
        for r in range(self.rounds):
            x = np.concatenate([positives, negatives])
            y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
            svm = LinearSVC(C=self.svm_c, class_weight="balanced", max_iter=2000, random_state=self.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # detectors are retrained every round
                svm.fit(x, y)
            w, b = svm.coef_[0].astype(np.float32), float(svm.intercept_[0])
            f = (r + 1) % n_fold
            pos_scores = desc[pos_f[f]] @ w + b  # (n_pos_f, P)
            best = pos_scores.argmax(1)
            top_pos = np.argsort(-pos_scores[np.arange(len(best)), best], kind="stable")[: self.neighbours]
            if r + 1 < self.rounds:
                positives = desc[pos_f[f][top_pos], best[top_pos]]
                neg_scores = (desc[neg_f[f]] @ w + b).reshape(-1)
                hard = np.argsort(-neg_scores, kind="stable")[: self.hard_negatives]
                keep_old = negatives @ w + b > -1.0  # inside the margin: still informative
                negatives = np.concatenate([negatives[keep_old], desc[neg_f[f]].reshape(-1, desc.shape[2])[hard]])
                if len(negatives) == 0:
                    negatives = desc[neg_f[f][:1], :1].reshape(1, -1)
        # purity on the fold after the last round
        f = self.rounds % n_fold
        imgs = np.concatenate([pos_f[f], neg_f[f]])
        is_pos = np.r_[np.ones(pos_f[f].size, bool), np.zeros(neg_f[f].size, bool)]
        s = (desc[imgs] @ w + b).max(1)
        n_top = max(1, min(self.top, pos_f[f].size))
        top = np.argsort(-s, kind="stable")[:n_top]
        assert w is not None and b is not None  # rounds >= 1 (__post_init__): the loop ran
        return (w, b), float(is_pos[top].mean()), float(s[top].mean())


def _box_overlap(boxes: np.ndarray) -> np.ndarray:
    """(P, 4) boxes -> (P, P) bool: whether two boxes overlap (share at least one pixel)."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    return (x0[:, None] < x1[None]) & (x0[None] < x1[:, None]) & (y0[:, None] < y1[None]) & (y0[None] < y1[:, None])


def _shared(
    imgs_a: np.ndarray, patches_a: np.ndarray, imgs_b: np.ndarray, patches_b: np.ndarray, overlap: np.ndarray
) -> float:
    """Share of detections (image, patch) of a that overlap a detection of b in the same image."""
    same = imgs_a[:, None] == imgs_b[None]  # (ka, kb)
    ov = overlap[patches_a[:, None], patches_b[None]]
    return float((same & ov).any(1).mean())
