"""Cotypicality tables and typicality as a classifier: pure functions on image-level scores.

The input everywhere is the image-level cotypicality matrix ``scores`` (B, L): ``scores[b, j]``
is T(x_b | label_j), the mean of the map returned by
:meth:`gcmodels.mining.typicality.TypicalityEstimator.cotypicality_maps` for image b under label j.

Since T(x | c) = E[L(null)] - E[L(c)] (eq. 2) and the null term does not depend on c, the label
of highest typicality is the label whose conditional model denoises the image best, i.e. the
diffusion-classifier rule argmin_c E_{t,eps} L_t(x, eps, c) (Li et al. 2023, "Your diffusion
model is secretly a zero-shot classifier"), with the draws shared across labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gcmodels.labels import LABEL_JOIN, split_labels

__all__ = [
    "classification_accuracy",
    "confused_labels",
    "confusion_matrix",
    "cotypicality_frame",
    "label_matrix",
    "predict_labels",
    "stratified_split",
]


def _check_scores(scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, L), got shape {scores.shape}")
    if scores.shape[1] != len(labels):
        raise ValueError(f"scores have {scores.shape[1]} label columns but {len(labels)} labels were given")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)!r}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return scores


def cotypicality_frame(image_ids: Sequence[str], labels: Sequence[str], scores: np.ndarray) -> pd.DataFrame:
    """The long table of `typicality.parquet` with cotypicality on: one row per (image, label).

    image_ids (B,), labels (L,) the conditioning labels, scores (B, L) -> columns
    ``image_id``, ``label``, ``typicality``; rows image-major, labels in the given order.
    """
    scores = _check_scores(scores, labels)
    if scores.shape[0] != len(image_ids):
        raise ValueError(f"scores have {scores.shape[0]} rows but {len(image_ids)} image ids were given")
    b, n_labels = scores.shape
    return pd.DataFrame(
        {
            "image_id": np.repeat(np.asarray(image_ids, dtype=object), n_labels),
            "label": np.tile(np.asarray(labels, dtype=object), b),
            "typicality": scores.reshape(-1),
        }
    )


def label_matrix(scores: np.ndarray, image_labels: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Mean typicality of the images of label a (row) under label b (column): (L, L) DataFrame.

    scores (B, L) with columns in the order of `labels`; image_labels (B,) the images' own labels
    (images whose label is not in `labels` are ignored; an image of several labels, ``"a|b"``, is
    an image of each). Rows are named after `labels` too; a label without images gets a row of
    NaN. Index name ``image_label``, columns name ``label``.
    """
    scores = _check_scores(scores, labels)
    own = np.asarray(image_labels, dtype=object)
    if own.shape != (scores.shape[0],):
        raise ValueError(f"image_labels must be ({scores.shape[0]},), got {own.shape}")
    carried = _carried(own)
    rows = []
    for a in labels:
        sel = np.array([a in c for c in carried], bool)
        rows.append(scores[sel].mean(0) if sel.any() else np.full(len(labels), np.nan))
    out = pd.DataFrame(np.vstack(rows), index=pd.Index(list(labels), name="image_label"), columns=list(labels))
    out.columns.name = "label"
    return out


def predict_labels(scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The label of highest typicality per image: scores (B, L) -> (B,) object array of labels.
    Ties go to the first label in `labels` order."""
    scores = _check_scores(scores, labels)
    return np.asarray(labels, dtype=object)[scores.argmax(1)]


def _carried(own: np.ndarray) -> list[frozenset]:
    """The labels each image carries: one, or those of a label set ``"a|b"`` (`gcmodels.labels`)."""
    return [frozenset(split_labels(v)) if isinstance(v, str) else frozenset([v]) for v in own]


def classification_accuracy(true_labels: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of images whose predicted label is their own label, or one of their labels for an
    image of several (``"a|b"``: a top-1 hit) (NaN for no images)."""
    true = np.asarray(true_labels, dtype=object)
    pred = np.asarray(predicted, dtype=object)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"true and predicted labels must be (B,) of equal length, got {true.shape} and {pred.shape}")
    hits = [p in c for p, c in zip(pred, _carried(true))]
    return float(np.mean(hits)) if true.size else float("nan")


def confusion_matrix(true_labels: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Counts of images of true label a (row) predicted as label b (column): (L, L) int DataFrame.

    Index name ``true``, columns name ``predicted``. An image of several labels (``"a|b"``) is
    counted in the row of each of its labels. Labels outside `labels` are an error.
    """
    true = np.asarray(true_labels, dtype=object)
    pred = np.asarray(predicted, dtype=object)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"true and predicted labels must be (B,) of equal length, got {true.shape} and {pred.shape}")
    if any(isinstance(v, str) and LABEL_JOIN in v for v in true):
        pairs = [(t, p) for v, p in zip(true, pred) for t in split_labels(v)]
        true, pred = np.asarray([t for t, _ in pairs], dtype=object), np.asarray([p for _, p in pairs], dtype=object)
    pos = {lab: i for i, lab in enumerate(labels)}
    if len(pos) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)!r}")
    unknown = sorted({str(v) for v in np.concatenate([true, pred]) if v not in pos})
    if unknown:
        raise ValueError(f"labels not in the label list: {unknown[:5]!r}")
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(counts, ([pos[v] for v in true], [pos[v] for v in pred]), 1)
    out = pd.DataFrame(counts, index=pd.Index(list(labels), name="true"), columns=list(labels))
    out.columns.name = "predicted"
    return out


def confused_labels(confusion: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """The off-diagonal cells of a confusion matrix, most confused first.

    Returns columns ``true``, ``predicted``, ``count``, ``share`` (count / images of the true
    label), only cells with count > 0, sorted by share then count (descending), then by names.
    """
    if list(confusion.index) != list(confusion.columns):
        raise ValueError("the confusion matrix must have the same labels on both axes")
    values = confusion.to_numpy()
    totals = values.sum(1)
    rows = [
        {"true": a, "predicted": b, "count": int(values[i, j]), "share": float(values[i, j] / totals[i])}
        for i, a in enumerate(confusion.index)
        for j, b in enumerate(confusion.columns)
        if i != j and values[i, j] > 0
    ]
    out = pd.DataFrame(rows, columns=["true", "predicted", "count", "share"])
    out = out.sort_values(["share", "count", "true", "predicted"], ascending=[False, False, True, True], kind="stable")
    out = out.reset_index(drop=True)
    return out if top is None else out.head(top)


def stratified_split(labels: Sequence[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified held-out split: (train indices, test indices), both sorted.

    Per label with n images, round(test_fraction * n) go to the test split, clipped so that a
    label with at least two images keeps at least one image on each side (a single image stays
    in training). Which images is drawn with ``numpy.random.default_rng(seed)``, label by label in
    sorted label order, so the split depends only on the labels, the fraction and the seed.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    label_array = np.asarray(labels, dtype=object)
    if label_array.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {label_array.shape}")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for lab in sorted(set(label_array.tolist()), key=str):
        idx = np.flatnonzero(label_array == lab)
        n = idx.size
        k = int(round(test_fraction * n))
        k = 0 if n < 2 else min(max(k, 1), n - 1)
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(label_array.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx.astype(np.int64)
