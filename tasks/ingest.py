"""ingest: list and decode the images, attach labels, write the manifest and working-size shards."""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from prefect import task

from gcmodels.config import DataConfig
from gcmodels.images import ImageRejected, decode_image, encode_png, image_id, to_working
from tasks.artifacts import MANIFEST, MANIFEST_COLUMNS, images_part, part_name, stopwatch
from tasks.logs import stage_logger
from tasks.storage import RunStore, is_local, join_uri, open_fs

__all__ = ["InputError", "Sources", "ingest", "ingest_images", "list_sources", "match_labels", "read_labels"]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


class InputError(ValueError):
    """The images or labels given by the user cannot be used; the message names the file."""


@dataclass
class Sources:
    uris: list[str]  # full URI or absolute path of each image
    names: list[str]  # path relative to IMAGES (posix), used to match labels
    labels: list[str | None] | None  # labels carried by the listing (folder per label, manifest column)


def _read_table(uri: str, what: str, storage_options: dict | None) -> pd.DataFrame:
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        raise InputError(f"{what} file {uri} does not exist")
    try:
        with fs.open(path, "rb") as fh:
            if path.lower().endswith((".parquet", ".pq")):
                df = pd.read_parquet(fh)
            else:
                df = pd.read_csv(fh, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} file {uri} is empty") from None
    except Exception as err:  # noqa: BLE001 - any parser error becomes a user-facing error naming the file
        raise InputError(f"{what} file {uri} could not be read as {'Parquet' if path.lower().endswith(('.parquet', '.pq')) else 'CSV'}: {err}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def list_sources(images: str, extensions: tuple[str, ...], storage_options: dict | None = None) -> Sources:
    """The images named by IMAGES: a folder (recursive, by extension) or a CSV/Parquet manifest."""
    fs, path = open_fs(images, storage_options)
    base = images.rstrip("/")
    if fs.isdir(path):
        exts = tuple(e.lower() for e in extensions)
        found = sorted(p for p in fs.find(path) if p.lower().endswith(exts))
        names = [posixpath.relpath(p, path) if not is_local(fs) else _local_rel(p, path) for p in found]
        uris = found if is_local(fs) else [join_uri(base, n) for n in names]
        folder_labels = [n.split("/", 1)[0] if "/" in n else None for n in names]
        labels = folder_labels if any(lab is not None for lab in folder_labels) else None
        return Sources(uris=uris, names=names, labels=labels)
    if not fs.exists(path):
        raise InputError(f"IMAGES {images} does not exist")
    if not path.lower().endswith(MANIFEST_SUFFIXES):
        raise InputError(f"IMAGES {images} is neither a folder nor a CSV/Parquet manifest")
    df = _read_table(images, "manifest", storage_options)
    col = "source" if "source" in df.columns else "filename" if "filename" in df.columns else None
    if col is None:
        raise InputError(f"manifest {images} needs a 'source' or 'filename' column; it has {list(df.columns)}")
    parent = base.rsplit("/", 1)[0] if "/" in base else "."
    uris, names = [], []
    for row, value in enumerate(df[col].astype(str)):
        value = value.strip()
        if not value:
            raise InputError(f"manifest {images}, row {row + 2}, column {col!r}: empty file name")
        absolute = "://" in value or value.startswith("/")
        uris.append(value if absolute else join_uri(parent, value))
        names.append(value if not absolute else value.rsplit("/", 1)[-1])
    labels = None
    if "label" in df.columns:
        labels = [_clean_label(v) for v in df["label"]]
    return Sources(uris=uris, names=names, labels=labels)


def _local_rel(p: str, root: str) -> str:
    return posixpath.relpath(p.replace("\\", "/"), root.replace("\\", "/"))


def _clean_label(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def read_labels(labels: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The LABELS table (filename, label), validated; labels are stripped strings."""
    df = _read_table(labels, "labels", storage_options)
    missing = [c for c in ("filename", "label") if c not in df.columns]
    if missing:
        raise InputError(f"labels file {labels} lacks column(s) {missing}; it has {list(df.columns)} (need filename,label)")
    if len(df) == 0:
        raise InputError(f"labels file {labels} has no rows")
    out = pd.DataFrame({"filename": df["filename"].astype(str).str.strip(), "label": [_clean_label(v) for v in df["label"]]})
    dup = out[out.duplicated("filename", keep=False)]
    conflicting = dup.groupby("filename")["label"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        name = conflicting.index[0]
        rows = [int(i) + 2 for i in out.index[out["filename"] == name]]
        raise InputError(f"labels file {labels}: {name!r} has different labels on rows {rows}")
    return out.drop_duplicates("filename")


def match_labels(names: list[str], table: pd.DataFrame) -> tuple[list[str | None], list[str]]:
    """Label of each image name (relative path, or unique basename); and the table's file names
    that match no image."""
    by_name = dict(zip(table["filename"], table["label"]))
    base_count = Counter(posixpath.basename(n) for n in names)
    out: list[str | None] = []
    used: set[str] = set()
    for name in names:
        if name in by_name:
            out.append(by_name[name])
            used.add(name)
            continue
        base = posixpath.basename(name)
        if base in by_name and base_count[base] == 1:
            out.append(by_name[base])
            used.add(base)
        else:
            out.append(None)
    missing = [f for f in table["filename"] if f not in used]
    return out, missing


def _decode_one(fs, uri: str, resolution: int, max_pixels: int) -> dict:
    try:
        data = fs.cat_file(uri if is_local(fs) else uri.split("://", 1)[-1])
    except FileNotFoundError:
        return {"status": "rejected", "reason": "file not found", "image_id": None}
    except OSError as err:
        return {"status": "rejected", "reason": f"unreadable file: {err}", "image_id": None}
    iid = image_id(data)
    try:
        img = decode_image(data, max_pixels=max_pixels)
    except ImageRejected as err:
        return {"status": "rejected", "reason": err.reason, "image_id": iid}
    return {
        "status": "ok",
        "reason": None,
        "image_id": iid,
        "width": img.width,
        "height": img.height,
        "png": encode_png(to_working(img, resolution)),
    }


def ingest_images(
    images: str, labels: str | None, store: RunStore, data: DataConfig, storage_options: dict | None = None,
    logger: logging.Logger | None = None,
) -> dict:
    """Everything of the ingest stage but the Prefect wrapping; returns the ingest summary."""
    log = logger or logging.getLogger("gcmine.ingest")
    sources = list_sources(images, data.extensions, storage_options)
    if not sources.uris:
        raise InputError(f"IMAGES {images} holds no image files with extensions {list(data.extensions)}")
    missing: list[str] = []
    if labels is not None:
        table = read_labels(labels, storage_options)
        assigned, missing = match_labels(sources.names, table)
        if all(lab is None for lab in assigned):
            raise InputError(
                f"labels file {labels} matches none of the {len(sources.names)} images in {images} "
                f"(first image: {sources.names[0]!r}; first label row: {table['filename'].iloc[0]!r})"
            )
    else:
        assigned = sources.labels if sources.labels is not None else [None] * len(sources.uris)
    fs, _ = open_fs(images, storage_options)
    with ThreadPoolExecutor(max_workers=8) as pool:
        decoded = list(pool.map(lambda u: _decode_one(fs, u, data.resolution, data.max_pixels), sources.uris))

    rows, shard_rows, first_seen = [], [], {}
    for uri, name, label, d in zip(sources.uris, sources.names, assigned, decoded):
        row = {
            "image_id": d["image_id"], "source": uri, "filename": posixpath.basename(name), "label": label,
            "width": d.get("width"), "height": d.get("height"), "status": d["status"], "reason": d["reason"],
        }
        if d["status"] == "ok" and d["image_id"] in first_seen:
            row.update(status="rejected", reason=f"duplicate of {first_seen[d['image_id']]}")
        elif d["status"] == "ok":
            first_seen[d["image_id"]] = uri
            shard_rows.append({"image_id": d["image_id"], "label": label, "png": d["png"]})
        rows.append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"width": "Int64", "height": "Int64"})
    shards = []
    for i in range(0, len(shard_rows), data.shard_size):
        name = part_name(len(shards))
        store.write_parquet(images_part(name), pd.DataFrame(shard_rows[i : i + data.shard_size]))
        shards.append(name)
    manifest["shard"] = -1
    ok = manifest["status"] == "ok"
    if ok.any():
        manifest.loc[ok, "shard"] = [i // data.shard_size for i in range(int(ok.sum()))]
    store.write_parquet(MANIFEST, manifest)

    rejected = manifest[~ok]
    by_reason = Counter(r.split(":", 1)[0] for r in rejected["reason"])
    unlabeled = int((ok & manifest["label"].isna()).sum())
    label_counts = manifest[ok & manifest["label"].notna()]["label"].value_counts().sort_index()
    summary = {
        "images": len(manifest), "ok": int(ok.sum()), "rejected": int((~ok).sum()),
        "rejected_by_reason": dict(by_reason), "unlabeled": unlabeled,
        "missing_files": len(missing), "missing_examples": missing[:5],
        "labels": {str(k): int(v) for k, v in label_counts.items()}, "shards": shards,
    }
    for _, r in rejected.head(10).iterrows():
        log.warning("rejected %s: %s", r["source"], r["reason"])
    if len(rejected) > 10:
        log.warning("... and %d more rejected images (see %s)", len(rejected) - 10, store.uri(MANIFEST))
    if missing:
        log.warning("%d labelled file(s) not found among the images, e.g. %s", len(missing), missing[:5])
    if unlabeled:
        examples = manifest[ok & manifest["label"].isna()]["source"].head(3).tolist()
        log.warning("%d image(s) have no label (used for the unconditional model only), e.g. %s", unlabeled, examples)
    if not shards:
        raise InputError(f"no usable image in {images}: all {len(manifest)} were rejected ({dict(by_reason)}); see {store.uri(MANIFEST)}")
    log.info(
        "ingested %d images (%d ok, %d rejected) with %d labels into %d shard(s)",
        len(manifest), summary["ok"], summary["rejected"], len(label_counts), len(shards),
    )
    return summary


def _transient(task, task_run, state) -> bool:
    """Retry only I/O failures (a flaky disk or network), never bad input."""
    try:
        state.result()
    except InputError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - anything else is a bug or bad data: no retry
        return False
    return False


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def ingest(images: str, labels: str | None, out: str, data: DataConfig, storage_options: dict | None = None) -> dict:
    """Prefect task: see `ingest_images`."""
    with stopwatch() as clock:
        summary = ingest_images(images, labels, RunStore(out, storage_options), data, storage_options, stage_logger())
    return {**summary, "seconds": clock["seconds"]}
