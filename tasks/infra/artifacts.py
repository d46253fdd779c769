"""Names and codecs of the run-root artifacts (see DESIGN.md, "Artifact contract")."""

from __future__ import annotations

import io
import os
import platform
import re
import socket
import subprocess
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from gcmine.tasks.infra.storage import RunStore
from gcmodels.labels import split_labels

MANIFEST = "manifest.parquet"
EMBEDDINGS = "embeddings.parquet"
CLUSTERS = "clusters.parquet"
CLUSTER_METRICS = "cluster_metrics.parquet"
CLUSTER_TRACES = "cluster_traces.parquet"
CLUSTER_CONTINGENCY = "cluster_contingency.parquet"
CLUSTER_LINKAGE = "cluster_linkage.parquet"
CONDITIONING = "conditioning.parquet"
COLLECTION_MAP = "collection_map.parquet"
MODEL = "model"
TRAINING = "training.parquet"
TYPICALITY = "typicality.parquet"
PATCHES = "patches.parquet"
ELEMENTS = "elements.parquet"
LABEL_MATRIX = "label_matrix.parquet"
CLASSIFICATION = "classification.parquet"
CONFUSION = "confusion.parquet"
TRANSLATIONS = "translations.parquet"
TRANSLATION_CHANGES = "translation_changes.parquet"
BASELINE = "baseline.parquet"
BASELINE_DETECTORS = "baseline_detectors.parquet"
EVALUATION = "evaluation.parquet"
EVALUATION_SUMMARY = "evaluation_summary.parquet"
SAMPLES = "samples.parquet"
SAMPLE_QUALITY = "sample_quality.parquet"
REPORT = "report/index.html"
RUN_JSON = "run.json"
SHARDS_META = "images/_shards.json"

MANIFEST_COLUMNS = ["image_id", "source", "filename", "label", "width", "height", "status", "reason"]
TYPICALITY_COLUMNS = ["image_id", "label", "image_label", "typicality", "draws", "typicality_se", "top_patch_se"]
# draws: (t, eps) draws the image's map used (score.draws, fewer for images settled by adaptive
# scoring); typicality_se: standard error of `typicality` from the spread of its draws;
# top_patch_se: that of the image's best patch (adaptive scoring only, NaN otherwise)
PATCH_COLUMNS = ["image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality", "element", "draws", "top_patch_se"]
# draws, top_patch_se: the precision of the patch's image, as in typicality.parquet (repeated on
# each of the image's patches; top_patch_se is that of its rank-0 patch, NaN without score.adaptive)
ELEMENT_COLUMNS = [
    "label",
    "element",
    "rank",
    "score",
    "size",
    "score_lo",
    "score_hi",
    "draws",
    "patch_se",
    "specificity",
    "shared",
]


def dataset_name(out: str) -> str:
    """The name of the dataset a run root holds: the last part of its path or URI."""
    return str(out).rstrip("/").rsplit("/", 1)[-1] or "run"


def dataset_slug(out: str) -> str:
    """`dataset_name(out)` in lowercase ASCII letters, digits and dashes (at most 40)."""
    ascii_name = unicodedata.normalize("NFKD", dataset_name(out)).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:40].strip("-") or "run"


def artifact_key(out: str, what: str) -> str:
    """Key of a Prefect UI artifact of run root `out`: `gcmine-<dataset>-<what>` in the lowercase
    letters, digits and dashes Prefect allows, so the Artifacts page keeps one entry per dataset
    (`gcmine-cars-summary`, `gcmine-cars-score-part-00000`)."""
    return f"gcmine-{dataset_slug(out)}-{re.sub(r'[^a-z0-9]+', '-', what.lower()).strip('-')}"


def stage_file(stem: str, key: str) -> str:
    """Content-addressed name of a cached stage's output table."""
    return f"stages/{stem}-{key}.parquet"


def keyed_part(folder: str, shard: str, key: str) -> str:
    """Content-addressed name of a shard's output: `folder/part-00003-<key>.parquet`."""
    return f"{folder}/{shard.removesuffix('.parquet')}-{key}.parquet"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def images_part(name: str) -> str:
    return f"images/{name}"


# ------------------------------------------------------------------ working images
def decode_pngs(column: pd.Series, square: int | None = None) -> np.ndarray:
    """PNG bytes column -> uint8 array (N, H, W, 3); with `square`, every image resized to
    `square` x `square` (views of working images that keep their aspect ratio)."""
    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in column]
    if square is not None:
        imgs = [im if im.size == (square, square) else im.resize((square, square), Image.Resampling.BOX) for im in imgs]
    elif len({im.size for im in imgs}) > 1:
        raise ValueError(
            f"working images of different sizes {sorted({im.size for im in imgs})[:4]}: pass a square size"
        )
    return np.stack([np.asarray(im) for im in imgs])


def decode_png_list(column: pd.Series) -> list[np.ndarray]:
    """PNG bytes column -> uint8 arrays (H_i, W_i, 3), each at its own working size."""
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in column]


def live_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's usable images, one row per `image_id` (status ok, the first copy), indexed
    by `image_id`."""
    return manifest[manifest["status"] == "ok"].drop_duplicates("image_id").set_index("image_id")


def live_labels(store: RunStore, conditioning: str | None = None) -> pd.Series:
    """image_id -> label (None if unlabelled) of the live images: the manifest's labels, or those
    of the conditioning table `conditioning` when given (images it does not label: None)."""
    manifest = store.read_parquet(MANIFEST, ["image_id", "label", "status"])
    live = live_rows(manifest)["label"]
    if conditioning is not None:
        cond = (
            store.read_parquet(conditioning, ["image_id", "label"])
            .drop_duplicates("image_id")
            .set_index("image_id")["label"]
        )
        live = cond.reindex(live.index)
    return live.map(lambda v: v if isinstance(v, str) else None)


def label_frequencies(labels: pd.Series) -> pd.Series:
    """Images per single label (sorted by label) of a column of label strings (None: unlabelled):
    an image of several labels (``"a|b"``, `gcmodels.labels`) counts once for each."""
    found = [lab for value in labels if isinstance(value, str) for lab in split_labels(value)]
    return pd.Series(found, dtype=object).value_counts().sort_index()


def per_label_rows(meta: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """`meta` (image_id, label, ...) with one row per (image, label): an image of several labels
    (``"a|b"``) becomes one row per label, its label set kept in `image_label`; and, for each new
    row, the position of its image in `meta`. Single-label rows are unchanged, in order (and
    `image_label` = `label`)."""
    labels = meta["label"].tolist()
    split = [split_labels(v) if isinstance(v, str) else (v,) for v in labels]
    where = np.repeat(np.arange(len(meta)), [len(s) for s in split])
    out = meta.iloc[where].reset_index(drop=True)
    out["image_label"] = [labels[i] for i in where]
    out["label"] = [lab for s in split for lab in s]
    return out, where


def read_images(
    store: RunStore,
    shards: list[str],
    conditioning: str | None = None,
    only: set[str] | None = None,
    *,
    ragged: bool = False,
) -> tuple[pd.DataFrame, np.ndarray | list[np.ndarray]]:
    """(image_id, label) table and uint8 working images (N, H, W, 3) of the live images of the
    given shards: those the current manifest lists as ok, with the manifest's labels (None if
    unlabelled), or, when `conditioning` names a conditioning table (image_id, label), with its
    labels (images it does not label: None). Shards may hold images of earlier runs that were
    since removed. `only`, if given, keeps just those image ids (the others are not decoded).

    Working images that keep their aspect ratio (data.resize=short_side) may differ in size:
    `ragged=True` returns them as a list of (H_i, W_i, 3) arrays at their own size; otherwise
    they are returned as square views at the working resolution (for the stages that read
    thumbnails: embeddings, baseline)."""
    live = live_labels(store, conditioning)
    df = store.read_parts("images", shards)
    df = df[df["image_id"].isin(live.index)]
    if only is not None:
        df = df[df["image_id"].isin(only)]
    df = df.reset_index(drop=True)
    df["label"] = [lab if isinstance(lab, str) else None for lab in live.reindex(df["image_id"])]
    if ragged:
        return df.drop(columns=["png"]), decode_png_list(df["png"])
    if not len(df):
        return df.drop(columns=["png"]), np.zeros((0, 1, 1, 3), np.uint8)
    meta = store.read_json(SHARDS_META) if store.exists(SHARDS_META) else {}
    square = int(meta["resolution"]) if meta.get("resize", "square") != "square" else None
    return df.drop(columns=["png"]), decode_pngs(df["png"], square)


# ------------------------------------------------------------------ embeddings
def read_embeddings(store: RunStore, name: str, batch_rows: int = 65536) -> tuple[pd.Series, np.ndarray]:
    """image ids (N,) and float32 embeddings (N, D) of the embeddings table `name`, filled batch
    by batch from the Arrow list buffers into one preallocated array (no per-row array objects,
    no float64 copy, no second copy of the table: 1M x 64 costs the 244 MiB of the result plus
    one batch). Missing, empty or ragged vectors are an error naming the table."""
    with store.fs.open(store.path(name), "rb") as fh:
        pf = pq.ParquetFile(fh)
        n = pf.metadata.num_rows
        ids: list[pa.Array] = []
        out: np.ndarray | None = None
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["image_id", "embedding"]):
            col = batch.column("embedding")
            if col.null_count:
                raise ValueError(f"{name}: {col.null_count} image(s) have no embedding")
            bounds = pc.min_max(pc.list_value_length(col)).as_py()
            d = bounds["max"] if out is None else out.shape[1]
            if bounds["min"] != bounds["max"] or not bounds["min"] or bounds["max"] != d:
                raise ValueError(
                    f"{name}: embeddings have different or zero lengths ({bounds['min']} to {bounds['max']}, first {d})"
                )
            if out is None:
                out = np.empty((n, d), dtype=np.float32)
            out[row : row + len(batch)] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), d)
            ids.append(batch.column("image_id"))
            row += len(batch)
    if out is None:
        return pd.Series([], dtype=object, name="image_id"), np.zeros((0, 0), np.float32)
    return pa.chunked_array(ids).to_pandas().rename("image_id"), out


# ------------------------------------------------------------------ maps
# Parquet options for the maps table (`store.write_parquet(rel, maps_frame(...), **MAPS_PARQUET)`):
# the float32 map values are stored losslessly, without dictionary encoding (almost every value is
# distinct, so pyarrow's default dictionary pages cost more than they save) and byte-stream-split
# (each byte of the float32 values in its own stream, which zstd compresses far better). Float16
# was measured and rejected: it changes the selected patches of some real maps (RESULTS.md, 1).
MAPS_PARQUET = {
    "use_dictionary": ["image_id", "label", "height", "width"],
    "use_byte_stream_split": ["map.list.element"],
}


def maps_frame(
    image_ids: list[str], labels: list[str], maps: np.ndarray | Sequence[np.ndarray], precision: dict | None = None
) -> pd.DataFrame:
    """Maps (N, h, w), or N maps (h_i, w_i) of different shapes (images that keep their aspect
    ratio) -> table with each map's shape and the map flattened to float32, one row per map, in
    the order given (write it with `MAPS_PARQUET`); `precision`, if given, adds its (N,) arrays
    `draws` and `top_patch_se` as columns (what rank copies onto the patches)."""
    frame = pd.DataFrame(
        {
            "image_id": image_ids,
            "label": labels,
            "height": np.array([m.shape[0] for m in maps], np.int32),
            "width": np.array([m.shape[1] for m in maps], np.int32),
            "map": [np.asarray(m, np.float32).reshape(-1) for m in maps],
        }
    )
    if precision is not None:
        frame["draws"] = np.asarray(precision["draws"], np.int64).reshape(len(frame))
        frame["top_patch_se"] = np.asarray(precision.get("top_patch_se", np.full(len(frame), np.nan)), np.float64)
    return frame


def unpack_map_rows(df: pd.DataFrame) -> list[np.ndarray]:
    """Inverse of `maps_frame`: one float32 (h, w) map per row, in row order, whatever float type
    the table holds."""
    return [
        np.asarray(m, dtype=np.float32).reshape(int(h), int(w)) for m, h, w in zip(df["map"], df["height"], df["width"])
    ]


def unpack_maps(df: pd.DataFrame) -> np.ndarray:
    """Inverse of `maps_frame` for maps of one shape: (N, h, w) float32."""
    if len(df) == 0:
        return np.zeros((0, 1, 1), np.float32)
    return np.stack(unpack_map_rows(df))


# ------------------------------------------------------------------ run.json
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("gcmine", "torch", "diffusers", "prefect", "numpy", "pandas", "pyarrow", "scikit-learn", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    """The git commit of the checkout gcmine runs from (with '-dirty'), else the package version."""
    here = Path(__file__).resolve().parents[2]  # tasks/infra/artifacts.py -> the checkout
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if rev:
            return rev
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return metadata.version("gcmine")
    except metadata.PackageNotFoundError:
        return "unknown"


GPU_ENV = "GCMINE_GPU"  # set by runtime.gpus in a GPU worker's environment: the node's index of its card


def worker_name() -> str:
    """`host:pid` of the process running a task (shards may run on Dask workers elsewhere), with
    ` gpu N` when it is a worker runtime.gpus pinned to card N of its node."""
    gpu = os.environ.get(GPU_ENV)
    return f"{socket.gethostname()}:{os.getpid()}" + (f" gpu {gpu}" if gpu else "")


@contextmanager
def stopwatch() -> Iterator[dict]:
    """`with stopwatch() as t: ...` then t["seconds"]."""
    out: dict = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - start, 3)


def model_description(model, train, checkpoint=None, data=None) -> str:
    """One line saying which diffusion model mines the run (`model`, `train`, `data`: the ModelConfig,
    TrainConfig and DataConfig sections; `checkpoint`: what model.base is, a
    `gcmodels.diffusion.CheckpointInfo`), for the log, the run summary and the report."""
    if model.base is None:
        how = "" if model.prediction == "epsilon" else f", {model.prediction}"
        where = ""
        if model.latent_factor > 1:
            where = (
                f" on the {model.latent_channels}-channel latents of an autoencoder learnt on the collection "
                f"({model.latent_factor} times smaller than the working images)"
            )
        return f"small pixel UNet trained from scratch{where}, channels {list(model.block_out_channels)}{how}"
    net = "UNet" if checkpoint is None or checkpoint.block_name == "decoder block" else "transformer"
    what = f"LoRA rank {train.lora_rank}" if train.lora_rank else f"full {net}"
    if checkpoint is None:
        head = f"checkpoint {model.base}, {what} fine-tuned"
    else:
        from gcmodels.config import LORA_ABOVE_PARAMETERS
        from gcmodels.diffusion.latent import format_parameters

        size = f", {format_parameters(checkpoint.parameters)} parameters" if checkpoint.parameters else ""
        big = checkpoint.parameters is not None and checkpoint.parameters > LORA_ABOVE_PARAMETERS
        why = f" (LoRA is the default above {LORA_ABOVE_PARAMETERS / 1e9:.0f} B)" if big and train.lora_rank else ""
        head = (
            f"{checkpoint.title} {model.base} ({checkpoint.pipeline}, {checkpoint.prediction}{size}), "
            f"{what} fine-tuned{why}"
        )
    if data is not None:
        fixed = (
            " (the checkpoint's fixed sample size)" if checkpoint is not None and checkpoint.fixed_resolution else ""
        )
        head += f"; working images {data.resolution} px {data.resize.replace('_', ' ')}{fixed}"
    if checkpoint is not None and checkpoint.conditioning == "class":
        return (
            head
            + f"; labels as class ids ({'model.class_map ' + model.class_map if model.class_map else 'labels that are ids'}), null class {checkpoint.num_classes}"
        )
    return head + f"; prompt {model.prompt_template!r}, null prompt {model.null_prompt!r}"


def run_info(
    settings,
    *,
    images: str,
    labels: str | None,
    out: str,
    stages: dict[str, dict],
    flow_run_id: str | None = None,
    reused: list[str] | None = None,
    checkpoint=None,
) -> dict:
    """Everything `run.json` records: inputs, config, code and library versions, seeds, device,
    per-stage timings and the run summary shown in the report."""
    ingested = stages.get("ingest", {})
    timings = {name: round(float(s.get("seconds", 0.0)), 3) for name, s in stages.items()}
    device = stages.get("finetune", {}).get("device", "unknown")
    summary = {
        k: ingested.get(k)
        for k in (
            "images",
            "ok",
            "rejected",
            "rejected_by_reason",
            "unlabeled",
            "missing_files",
            "missing_examples",
            "notes",
        )
    }
    summary.update(reused=list(reused or []), new_images=ingested.get("new_images"))
    summary.update(
        labels=len(ingested.get("labels", {})), label_counts=ingested.get("labels", {}), timings=timings, device=device
    )
    cond = stages.get("condition", {})
    if cond:
        summary["conditioning"] = f"{cond.get('source')} ({cond.get('reason')})"
    summary["model"] = model_description(settings.model, settings.train, checkpoint, settings.data)
    if checkpoint is not None:
        summary["model_family"] = {
            "family": checkpoint.family,
            "title": checkpoint.title,
            "pipeline": checkpoint.pipeline,
            "prediction": checkpoint.prediction,
            "parameters": checkpoint.parameters,
            "native_resolution": checkpoint.native_resolution,
            "working_resolution": settings.data.resolution,
            "fine_tuning": f"LoRA rank {settings.train.lora_rank}" if settings.train.lora_rank else "full",
        }
    summary["config"] = settings.model_dump(mode="json")
    return {
        "images": images,
        "labels": labels,
        "out": out,
        "flow_run_id": flow_run_id,
        "code_version": code_version(),
        "libraries": library_versions(),
        "seeds": {
            "train": settings.train.seed,
            "score": settings.score.seed,
            "rank": settings.rank.seed,
            "cluster": settings.cluster.seed,
        },
        "device": device,
        "timings": timings,
        "reused": list(reused or []),
        "config": settings.model_dump(mode="json"),
        "stages": {
            name: {k: v for k, v in s.items() if k not in ("shards", "missing_examples")} for name, s in stages.items()
        },
        "summary": summary,
    }
