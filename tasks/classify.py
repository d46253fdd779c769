"""classify: cotypicality tables and typicality as a classifier, from `typicality.parquet`.

Needs `score.cotypicality` (one row per image and label). Held-out images are the live labelled
images that the run's model was not trained on (`model/training_set.parquet`), which is the
`score.holdout` split and, after a model reuse, any image added since training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from gcmine.tasks.infra.artifacts import (
    CLASSIFICATION,
    CONFUSION,
    LABEL_MATRIX,
    MODEL,
    TYPICALITY,
    artifact_key,
    dataset_name,
    stopwatch,
)
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import TRAINING_SET
from gcmine.tasks.infra.storage import RunStore
from gcmodels.mining.cotypicality import (
    classification_accuracy,
    confused_labels,
    confusion_matrix,
    label_matrix,
    predict_labels,
)

__all__ = ["classification_summary", "classify", "cotypicality_scores"]


def cotypicality_scores(typicality: pd.DataFrame, labels: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The long `typicality.parquet` -> (one row per image: `image_id`, `image_label`; scores
    (B, L) in `labels` order). Every image must have a row for every label."""
    wide = typicality.pivot_table(
        index=["image_id", "image_label"], columns="label", values="typicality", aggfunc="first"
    )
    missing = [lab for lab in labels if lab not in wide.columns]
    if missing or wide[labels].isna().any().any():
        raise ValueError(
            f"{TYPICALITY}: not every image is scored under every label (missing {missing[:5] or 'some pairs'}); "
            "rerun with score.cotypicality: true"
        )
    wide = wide[labels]
    return wide.index.to_frame(index=False), wide.to_numpy(np.float64)


def classification_summary(images: pd.DataFrame, scores: np.ndarray, labels: list[str], trained: set[str]) -> dict:
    """Predictions, accuracy and confusion: on the held-out images (not in `trained`) when there
    are any, else on all images (then the accuracy is on images the model was trained on)."""
    predicted = predict_labels(scores, labels)
    held = ~images["image_id"].isin(trained).to_numpy()
    own = images["image_label"].to_numpy(object)
    split = "held-out" if held.any() else "training"
    sel = held if held.any() else np.ones(len(images), bool)
    confusion = confusion_matrix(own[sel], predicted[sel], labels)
    return {
        "predicted": predicted,
        "held_out": held,
        "split": split,
        "images": int(sel.sum()),
        "accuracy": classification_accuracy(own[sel], predicted[sel]),
        "train_accuracy": classification_accuracy(own[~held], predicted[~held]),
        "confusion": confusion,
        "confused": confused_labels(confusion),
    }


def _long(matrix: pd.DataFrame, rows: str, columns: str, value: str) -> pd.DataFrame:
    """(L, L) matrix -> long table (rows, columns, value), row-major, NaN cells kept."""
    r, c = len(matrix.index), len(matrix.columns)
    return pd.DataFrame(
        {
            rows: np.repeat(np.asarray(matrix.index, dtype=object), c),
            columns: np.tile(np.asarray(matrix.columns, dtype=object), r),
            value: matrix.to_numpy().reshape(-1),
        }
    )


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _markdown(result: dict) -> str:
    labels = result["labels"]
    esc = [str(lab).replace("|", "\\|") for lab in labels]
    lines = [
        "# gcmine: typicality as a classifier",
        "",
        f"Accuracy on {result['images']} {result['split']} images: **{100 * (result['accuracy'] or 0):.1f}%** "
        f"(chance {100 / max(1, len(labels)):.1f}%).",
        "",
        "| true \\ predicted | " + " | ".join(esc) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for lab, row in zip(esc, result["confusion"]):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


@task(name="classify", task_run_name="classify")
def classify(out: str, fingerprint: str, storage_options: dict | None = None) -> dict:
    """Write `label_matrix.parquet` (mean typicality of the images of `image_label` under
    `label`), `classification.parquet` (per image: own label, predicted label, held out or not)
    and `confusion.parquet` (`true`, `predicted`, `count` on the evaluated split); publish the
    accuracy and confusion matrix as a Prefect artifact. `fingerprint` keys the model read."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        typicality = store.read_parquet(TYPICALITY)
        labels = sorted(typicality["label"].dropna().unique().tolist(), key=str)
        images, scores = cotypicality_scores(typicality, labels)
        trained = set(store.read_parquet(f"{MODEL}/{TRAINING_SET}")["image_id"])
        matrix = label_matrix(scores, images["image_label"].tolist(), labels)
        counts = images["image_label"].value_counts()
        long = _long(matrix, "image_label", "label", "typicality")
        long["images"] = long["image_label"].map(counts).fillna(0).astype(np.int64)
        store.write_parquet(LABEL_MATRIX, long[["image_label", "label", "typicality", "images"]])
        found = classification_summary(images, scores, labels, trained)
        store.write_parquet(
            CLASSIFICATION,
            pd.DataFrame(
                {
                    "image_id": images["image_id"],
                    "label": images["image_label"],
                    "predicted": found["predicted"],
                    "held_out": found["held_out"],
                }
            ),
        )
        conf = _long(found["confusion"], "true", "predicted", "count")
        store.write_parquet(CONFUSION, conf[["true", "predicted", "count"]])
    result = {
        "labels": labels,
        "split": found["split"],
        "images": found["images"],
        "accuracy": _finite(found["accuracy"]),
        "train_accuracy": _finite(found["train_accuracy"]),
        "held_out": int(found["held_out"].sum()),
        "confusion": found["confusion"].to_numpy().tolist(),
        "confused": found["confused"].head(5).to_dict(orient="records"),
        "seconds": clock["seconds"],
    }
    log.info(
        "typicality as a classifier: %.1f%% accuracy on %d %s images",
        100 * (result["accuracy"] or 0),
        result["images"],
        result["split"],
    )
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            _markdown(result),
            key=artifact_key(out, "classifier"),
            description=f"{dataset_name(out)}: typicality as a classifier ({out})",
        )
    except Exception as err:
        log.debug("Prefect artifact not created: %s", err)
    return result
