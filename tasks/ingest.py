"""ingest: list and decode the images, attach labels, write the manifest and working-size shards."""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from prefect import task

from gcmine.tasks.infra.artifacts import (
    MANIFEST,
    MANIFEST_COLUMNS,
    SHARDS_META,
    images_part,
    label_frequencies,
    part_name,
    stopwatch,
)
from gcmine.tasks.infra.caching import content_key
from gcmine.tasks.infra.errors import DamagedArtifact, InputError, StorageError
from gcmine.tasks.infra.integrity import parquet_damage
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore, is_local, join_uri, open_fs, with_retries
from gcmodels.config import DataConfig
from gcmodels.data.images import ImageRejected, decode_image, encode_png, image_id, reason_kind, to_working
from gcmodels.labels import LABEL_JOIN, join_labels, split_labels

__all__ = [
    "InputError",
    "Sources",
    "clean_label",
    "ingest",
    "ingest_images",
    "label_value",
    "list_sources",
    "match_labels",
    "read_labels",
    "read_table",
]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Sources:
    uris: list[str]  # full URI or absolute path of each image
    names: list[str]  # path relative to IMAGES (posix), used to match labels
    labels: list[str | None] | None  # labels carried by the listing (folder per label, manifest column)
    sizes: list[int | None] | None = None  # bytes of each object, when the listing gave them (object stores)


def read_table(uri: str, what: str, storage_options: dict | None) -> pd.DataFrame:
    import io

    fs, path = open_fs(uri, storage_options)
    if not with_retries(fs, f"checking {uri}", fs.exists, path):
        raise InputError(f"{what} file {uri} does not exist")
    if with_retries(fs, f"checking {uri}", fs.isdir, path):
        raise InputError(f"{what} file {uri} is a folder, not a CSV/Parquet file")
    if is_local(fs) and not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would hang the read
        raise InputError(
            f"{what} file {uri} is {_FILE_KINDS.get(stat.S_IFMT(os.stat(path).st_mode), 'not a regular file')}, not a CSV/Parquet file"
        )
    raw = with_retries(fs, f"reading {uri}", fs.cat_file, path)
    try:
        fh = io.BytesIO(raw)
        if path.lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(fh)
        else:
            df = pd.read_csv(fh, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} file {uri} is empty") from None
    except Exception as err:
        raise InputError(
            f"{what} file {uri} could not be read as {'Parquet' if path.lower().endswith(('.parquet', '.pq')) else 'CSV'}: {err}"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def list_sources(
    images: str, extensions: tuple[str, ...], storage_options: dict | None = None, separator: str = LABEL_JOIN
) -> Sources:
    """The images named by IMAGES: a folder (recursive, by extension) or a CSV/Parquet manifest;
    the labels a folder per label or a manifest's label column give (split on `separator`)."""
    fs, path = open_fs(images, storage_options)
    base = images.rstrip("/")
    if with_retries(fs, f"checking {images}", fs.isdir, path):
        exts = tuple(e.lower() for e in extensions)
        listing = with_retries(fs, f"listing {images}", fs.find, path, detail=not is_local(fs))  # sizes: object stores
        listing = listing if isinstance(listing, dict) else {p: {} for p in listing}
        found = sorted(p for p in listing if p.lower().endswith(exts))
        names = [posixpath.relpath(p, path) if not is_local(fs) else _local_rel(p, path) for p in found]
        uris = found if is_local(fs) else [join_uri(base, n) for n in names]
        folders = [n.split("/", 1)[0] if "/" in n else None for n in names]
        try:
            folder_labels = [label_value(f, separator) for f in folders]
        except ValueError as err:
            raise InputError(f"IMAGES {images}, a label folder's name: {err}") from None
        labels = folder_labels if any(lab is not None for lab in folder_labels) else None
        sizes = None if is_local(fs) else [listing[p].get("size") for p in found]  # local files are checked with stat
        return Sources(uris=uris, names=names, labels=labels, sizes=sizes)
    if not with_retries(fs, f"checking {images}", fs.exists, path):
        raise InputError(f"IMAGES {images} does not exist")
    if not path.lower().endswith(MANIFEST_SUFFIXES):
        raise InputError(f"IMAGES {images} is neither a folder nor a CSV/Parquet manifest")
    df = read_table(images, "manifest", storage_options)
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
    labels = _label_column(df["label"], separator, f"manifest {images}") if "label" in df.columns else None
    return Sources(uris=uris, names=names, labels=labels)


def _local_rel(p: str, root: str) -> str:
    """Path of local file `p` relative to folder `root`, with '/' between folders. fsspec gives
    local paths with '/' on every platform, so a backslash is part of a file name (legal on POSIX:
    `a\\b.png` is one file, not b.png in folder a) and is kept."""
    return posixpath.relpath(p, root)


def clean_label(value: object) -> str | None:
    """A label as text: stripped, Unicode NFC (so that visually equal labels are equal); None
    when missing or blank. Labels are data, never paths: any other character is kept."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = unicodedata.normalize("NFC", str(value)).strip()
    return text or None


def label_value(value: object, separator: str = LABEL_JOIN) -> str | None:
    """The labels of one label value as a canonical label string (`gcmodels.labels`: sorted,
    joined by ``|``): split on `separator` ('' = the value is one label), each part cleaned as
    `clean_label`, blanks dropped; None when no label is left. ValueError when a label contains
    ``|`` (gcmine joins an image's labels with it) while `separator` is another one."""
    text = clean_label(value)
    if text is None:
        return None
    parts = [clean_label(p) for p in text.split(separator)] if separator else [text]
    found = [p for p in parts if p is not None]
    if not found:
        return None
    bad = [p for p in found if LABEL_JOIN in p]
    if bad:
        raise ValueError(
            f"label {bad[0]!r} contains {LABEL_JOIN!r}, which joins an image's labels: set data.label_separator "
            f"to {LABEL_JOIN!r} if it separates several labels, or rename the label"
        )
    return join_labels(found)


def _label_column(values: pd.Series, separator: str, where: str) -> list[str | None]:
    """`label_value` of each value of a table's `label` column; InputError naming `where` (the
    file), the CSV row and the problem."""
    out = []
    for row, value in enumerate(values):
        try:
            out.append(label_value(value, separator))
        except ValueError as err:
            raise InputError(f"{where}, row {row + 2}, column 'label': {err}") from None
    return out


def _rows(mask: pd.Series) -> str:
    """CSV row numbers (the header is row 1) of the true entries of `mask`, a few of them."""
    rows = [int(i) + 2 for i in mask.index[mask.to_numpy()]]
    return ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def read_labels(
    labels: str, storage_options: dict | None = None, notes: list[str] | None = None, separator: str = LABEL_JOIN
) -> pd.DataFrame:
    """The LABELS table (filename, label), one row per file name, validated; labels are stripped
    NFC strings. An image may carry several labels: in one value separated by `separator`, or on
    repeated rows of its file name; its `label` is then the canonical set (``"a|b"``, sorted).

    Unusable rows (an empty file name, a label containing ``|`` under another separator) raise
    `InputError` naming the file, the rows and the column; recoverable ones (an empty label: the
    image is kept unlabelled) add a sentence to `notes`."""
    df = read_table(labels, "labels", storage_options)
    missing = [c for c in ("filename", "label") if c not in df.columns]
    if missing:
        raise InputError(
            f"labels file {labels} lacks column(s) {missing}; it has {list(df.columns)} (need filename,label)"
        )
    if len(df) == 0:
        raise InputError(f"labels file {labels} has no rows")
    df = df.reset_index(drop=True)
    names = df["filename"].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    if (names == "").any():
        raise InputError(f"labels file {labels}, row(s) {_rows(names == '')}, column 'filename': empty file name")
    out = pd.DataFrame({"filename": names, "label": _label_column(df["label"], separator, f"labels file {labels}")})
    blank = out["label"].isna()
    if blank.any() and notes is not None:
        notes.append(
            f"labels file {labels}, row(s) {_rows(blank)}, column 'label': empty label; "
            f"{int(blank.sum())} image(s) kept without a label (unconditional training only)"
        )
    repeated = out.duplicated("filename", keep=False)
    if repeated.any():  # repeated rows of a file name: the union of their labels
        union = (
            out[repeated & out["label"].notna()]
            .groupby("filename")["label"]
            .agg(lambda v: join_labels(lab for value in v for lab in split_labels(value)))
        )
        out = out.drop_duplicates("filename").reset_index(drop=True)
        known = out["filename"].isin(union.index)
        out.loc[known, "label"] = out.loc[known, "filename"].map(union)
        return out
    return out


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


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class _Refused(Exception):
    """A source that is not read: the reason goes to the manifest."""


def _too_large(size: int, limit: int) -> _Refused:
    return _Refused(f"too large: {size:,} bytes, more than data.max_file_bytes = {limit:,} (not read)")


def _not_regular(mode: int) -> _Refused:
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a plain file")
    return _Refused(f"not a regular file: {kind} (never opened)")


def _read_local(path: str, limit: int) -> bytes:
    """The bytes of local file `path` (symlinks followed) if it is a regular file of at most
    `limit` bytes; `_Refused` otherwise, decided before reading (a FIFO, a device or a socket is
    never opened; a symlink to /dev/zero or to a huge file is never read)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    if st.st_size > limit:
        raise _too_large(st.st_size, limit)
    # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not hang
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew since the stat
        raise _too_large(len(data), limit)
    return data


def _read_source(fs, uri: str, limit: int, size: int | None) -> bytes:
    """The bytes of one image source, at most `limit` of them (see `_read_local`); on an object
    store a size known from the listing is checked before the read, and the read itself asks for
    no more than `limit` + 1 bytes."""
    if is_local(fs):
        return _read_local(uri, limit)
    if size is not None and size > limit:
        raise _too_large(size, limit)
    path = uri.split("://", 1)[-1]
    data = with_retries(fs, f"reading {uri}", fs.cat_file, path, start=0, end=limit + 1, transfer=None)
    if len(data) > limit:
        raise _too_large(size or len(data), limit)
    return data


def _decode_one(
    fs,
    uri: str,
    data_config: DataConfig,
    known: frozenset[str],
    size: int | None = None,
    multiple: int = 8,
) -> dict:
    """Read one file; decode it unless its content (image_id) is already in a reusable shard.
    A file that cannot be read, is not a regular file or is larger than `data.max_file_bytes` is
    rejected; an object store failing after its retries fails the run (`StorageError`) rather
    than dropping images."""
    try:
        data = _read_source(fs, uri, data_config.max_file_bytes, size)
    except _Refused as err:
        return {"status": "rejected", "reason": str(err), "image_id": None}
    except FileNotFoundError:
        return {"status": "rejected", "reason": "file not found", "image_id": None}
    except StorageError as err:
        if not is_local(fs):
            raise
        return {"status": "rejected", "reason": f"unreadable file: {err.__cause__ or err}", "image_id": None}
    except OSError as err:
        return {"status": "rejected", "reason": f"unreadable file: {err.strerror or err}", "image_id": None}
    iid = image_id(data)
    if iid in known:
        return {"status": "ok", "reason": None, "image_id": iid, "known": True}
    try:
        img = decode_image(
            data, max_pixels=data_config.max_pixels, min_side=data_config.min_side, max_aspect=data_config.max_aspect
        )
    except ImageRejected as err:
        return {"status": "rejected", "reason": err.reason, "image_id": iid}
    return {
        "status": "ok",
        "reason": None,
        "image_id": iid,
        "width": img.width,
        "height": img.height,
        "png": encode_png(to_working(img, data_config.resolution, data_config.resize, multiple)),
    }


def _previous_run(
    store: RunStore,
    resolution: int,
    resize: str = "square",
    log: logging.Logger | logging.LoggerAdapter | None = None,
    multiple: int = 8,
) -> tuple[list[dict], pd.DataFrame]:
    """Shards of an earlier run at the same working size policy (reusable as they are) and its ok
    rows. A damaged manifest or shard list is ignored, and a missing or damaged shard is not
    reused (its images are decoded again from the sources), each with a warning naming it."""
    log = log or logging.getLogger("gcmine.ingest")
    empty = pd.DataFrame(columns=["image_id", "width", "height", "first_seen"])
    if not store.exists(SHARDS_META) or not store.exists(MANIFEST):
        return [], empty
    try:
        meta = store.read_json(SHARDS_META)
        prev = store.read_parquet(MANIFEST)
    except DamagedArtifact as err:
        log.warning("%s: every image is decoded again from the sources", str(err).split("; ", 1)[0])
        return [], empty
    prev = prev[prev["status"] == "ok"].drop_duplicates("image_id")
    if "first_seen" not in prev.columns:
        prev["first_seen"] = None
    same = meta.get("resize", "square") == resize and (resize == "square" or meta.get("multiple", 8) == multiple)
    if meta.get("resolution") != resolution:
        shards = []
    elif same:
        shards = meta["shards"]
    else:  # another resize policy: square originals have the same working image under every policy
        squares = set(prev.loc[(prev["width"] == prev["height"]).fillna(False).astype(bool), "image_id"])
        shards = [sh for sh in meta["shards"] if set(sh["ids"]) <= squares]
    have = set().union(*[set(sh["ids"]) for sh in shards]) if shards else set()
    # A shard is reusable only if the previous manifest still describes all of its images.
    if not have <= set(prev["image_id"]):
        shards = []
    # ... and if its file is there and whole (footer and layout: one small read per shard)
    with ThreadPoolExecutor(max_workers=8) as pool:
        damage = list(pool.map(lambda sh: parquet_damage_or_missing(store, images_part(sh["name"])), shards))
    for sh, reason in zip(shards, damage):
        if reason is not None:
            log.warning(
                "the image shard %s is %s: its %d image(s) are decoded again from the sources",
                store.uri(images_part(sh["name"])),
                reason if reason == "missing" else f"damaged ({reason})",
                len(sh["ids"]),
            )
    return [sh for sh, reason in zip(shards, damage) if reason is None], prev[
        ["image_id", "width", "height", "first_seen"]
    ]


def parquet_damage_or_missing(store: RunStore, rel: str) -> str | None:
    """None if Parquet artifact `rel` is there and whole (judged from its footer), else why not."""
    if not store.exists(rel):
        return "missing"
    return parquet_damage(store, rel, full_below=0)


def ingest_images(
    images: str,
    labels: str | None,
    store: RunStore,
    data: DataConfig,
    storage_options: dict | None = None,
    logger: logging.Logger | None = None,
    multiple: int = 8,
) -> dict:
    """Everything of the ingest stage but the Prefect wrapping; returns the ingest summary.

    Incremental: the image shards of an earlier run into the same root (same resolution) are
    kept as they are; only images whose content is new are decoded, into new shards. Labels live
    in the manifest only, so relabelling never rewrites a shard. Each downstream shard carries a
    fingerprint of its images and of its live labelled images, which keys the cached stages.
    """
    log = logger or logging.getLogger("gcmine.ingest")
    sources = list_sources(images, data.extensions, storage_options, data.label_separator)
    if not sources.uris:
        raise InputError(f"IMAGES {images} holds no image files with extensions {list(data.extensions)}")
    notes: list[str] = []  # recoverable problems and what was decided, for the log, summary and report
    assigned, missing = _assign_labels(images, labels, sources, storage_options, notes, data.label_separator)
    old_shards, previous = _previous_run(store, data.resolution, data.resize, log, multiple)
    shard_of = {iid: sh["name"] for sh in old_shards for iid in sh["ids"]}
    decoded = _decode_sources(images, sources, data, frozenset(shard_of), storage_options, multiple)
    manifest, new_rows = _manifest(sources, assigned, decoded, previous, shard_of)
    all_shards = _write_new_shards(store, manifest, old_shards, new_rows, data.shard_size)
    policy, oblong = _fingerprint_shards(all_shards, manifest, data, multiple)
    store.write_json(
        SHARDS_META, {"resolution": data.resolution, "resize": data.resize, "multiple": multiple, "shards": all_shards}
    )
    store.write_parquet(MANIFEST, manifest)
    ok = manifest["status"] == "ok"
    label_counts = label_frequencies(manifest[ok]["label"])
    notes += _label_notes(manifest, label_counts, missing)
    summary = _summary(
        manifest, all_shards, label_counts, missing, notes, data.resolution, policy, oblong, new_rows, old_shards
    )
    _log_outcome(log, store, manifest, notes, len(new_rows), len(old_shards))
    _check_usable(images, labels, store, manifest, summary, label_counts, data.max_labels)
    log.info(
        "ingested %d images (%d ok, %d rejected) with %d labels into %d shard(s)",
        len(manifest),
        summary["ok"],
        summary["rejected"],
        len(label_counts),
        len(summary["shards"]),
    )
    return summary


def _assign_labels(
    images: str,
    labels: str | None,
    sources: Sources,
    storage_options: dict | None,
    notes: list[str],
    separator: str = LABEL_JOIN,
) -> tuple[list[str | None], list[str]]:
    """The label of each source (from the LABELS table when given, else from the listing) and the
    table's file names that match no image. A table that labels none of the images is an
    `InputError`; its recoverable problems are added to `notes`."""
    if labels is None:
        assigned = sources.labels if sources.labels is not None else [None] * len(sources.uris)
        return assigned, []
    table = read_labels(labels, storage_options, notes, separator)
    assigned, missing = match_labels(sources.names, table)
    if all(lab is None for lab in assigned) and len(missing) < len(table):
        raise InputError(
            f"labels file {labels}, column 'label': every row that names one of the images in {images} "
            "has an empty label, so no image is labelled"
        )
    if all(lab is None for lab in assigned):
        raise InputError(
            f"labels file {labels} matches none of the {len(sources.names)} images in {images} "
            f"(first image: {sources.names[0]!r}; first label row: {table['filename'].iloc[0]!r})"
        )
    return assigned, missing


def _decode_sources(
    images: str,
    sources: Sources,
    data: DataConfig,
    known: frozenset[str],
    storage_options: dict | None,
    multiple: int,
) -> list[dict]:
    """`_decode_one` over every source, in listing order (8 threads); the images whose content is
    in `known` (a reusable shard) are read and identified, not decoded."""
    fs, _ = open_fs(images, storage_options)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = sources.sizes or [None] * len(sources.uris)
        return list(pool.map(lambda us: _decode_one(fs, us[0], data, known, us[1], multiple), zip(sources.uris, sizes)))


def _manifest(
    sources: Sources,
    assigned: list[str | None],
    decoded: list[dict],
    previous: pd.DataFrame,
    shard_of: dict[str, str],
) -> tuple[pd.DataFrame, list[dict]]:
    """The manifest (one row per source, its status and reason; `first_seen` kept from the earlier
    run; `shard` set for images of a reused shard) and the rows (image_id, png) of the newly
    decoded images. The first copy of an image (in listing order) is kept; later copies are
    rejected as duplicates (a label conflict when their label differs)."""
    prev = previous.set_index("image_id")
    now = pd.Timestamp.now(tz="UTC").isoformat()
    rows, new_rows, seen = [], [], {}  # seen: image_id -> (uri, label) of its first (kept) copy
    for uri, name, label, d in zip(sources.uris, sources.names, assigned, decoded):
        iid = d["image_id"]
        row = {
            "image_id": iid,
            "source": uri,
            "filename": posixpath.basename(name),
            "label": label,
            "width": d.get("width"),
            "height": d.get("height"),
            "status": d["status"],
            "reason": d["reason"],
            "first_seen": now,
        }
        if iid in prev.index and isinstance(prev.at[iid, "first_seen"], str):
            row["first_seen"] = prev.at[iid, "first_seen"]
        if d["status"] == "ok" and iid in seen:
            # Decision: the first copy (in listing order) is kept, later copies are rejected;
            # with another label the copy is recorded as a label conflict (the first label wins).
            first, first_label = seen[iid]
            if label != first_label:
                row.update(
                    status="rejected",
                    reason=f"duplicate with another label: same content as {first} (label {first_label!r}), "
                    f"here labelled {label!r}; the first copy and its label are kept",
                )
            else:
                row.update(status="rejected", reason=f"duplicate: same content as {first}")
        elif d["status"] == "ok":
            seen[iid] = (uri, label)
            if d.get("known"):
                row.update(width=prev.at[iid, "width"], height=prev.at[iid, "height"], shard=shard_of[iid])
            else:
                new_rows.append({"image_id": iid, "png": d["png"]})
        rows.append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + ["first_seen", "shard"])
    manifest = manifest.astype({"width": "Int64", "height": "Int64", "shard": object, "first_seen": object})
    return manifest, new_rows


def _write_new_shards(
    store: RunStore, manifest: pd.DataFrame, old_shards: list[dict], new_rows: list[dict], shard_size: int
) -> list[dict]:
    """Write the newly decoded images as new shards of `shard_size` images, numbered after the
    reused ones, and set their ok rows' `shard` in `manifest`; return every shard (reused first)
    as {name, ids}."""
    all_shards = list(old_shards)
    next_index = 1 + max((int(sh["name"].split("-")[1].split(".")[0]) for sh in old_shards), default=-1)
    for i in range(0, len(new_rows), shard_size):
        chunk = new_rows[i : i + shard_size]
        name = part_name(next_index + len(all_shards) - len(old_shards))
        store.write_parquet(images_part(name), pd.DataFrame(chunk))
        ids = [r["image_id"] for r in chunk]
        all_shards.append({"name": name, "ids": ids})
        manifest.loc[manifest["image_id"].isin(ids) & (manifest["status"] == "ok"), "shard"] = name
    return all_shards


def _fingerprint_shards(
    all_shards: list[dict], manifest: pd.DataFrame, data: DataConfig, multiple: int
) -> tuple[list, set[str]]:
    """Set each shard's `fingerprint` (its image ids, the resolution, and the working size policy
    when it holds an oblong image); return that policy and the ids of the oblong ok images."""
    # the working size policy keys the shards that hold an image it changes (one that is not a
    # square: a square gives resolution x resolution under every policy): resize (when not square),
    # and the long side's rounding when it is not the VAE's 8 (the pixel UNet's downsampling factor)
    policy = [data.resize] if data.resize != "square" else []
    policy += [multiple] if data.resize != "square" and multiple != 8 else []
    done = manifest[manifest["status"] == "ok"]
    oblong = set(done.loc[(done["width"] != done["height"]).fillna(True).astype(bool), "image_id"])
    for sh in all_shards:
        keyed = policy if oblong.intersection(sh["ids"]) else []
        sh["fingerprint"] = content_key(sorted(sh["ids"]), data.resolution, *keyed)
    return policy, oblong


def _live_shards(all_shards: list[dict], live: pd.DataFrame) -> list[dict]:
    """The shards that hold at least one live (ok) image: name, fingerprint, and `labels`, the key
    of their (image_id, label) pairs."""
    shards = []
    for sh in all_shards:
        members = live[live["shard"] == sh["name"]]
        if len(members):
            pairs = sorted(
                zip(members["image_id"], members["label"].map(lambda v: v if isinstance(v, str) else None)), key=str
            )
            shards.append({"name": sh["name"], "fingerprint": sh["fingerprint"], "labels": content_key(pairs)})
    return shards


def _label_notes(manifest: pd.DataFrame, label_counts: pd.Series, missing: list[str]) -> list[str]:
    """The sentences on what the labelling left out or decided: labels left without an image or
    with one, duplicates with another label, labelled files not found, unlabelled images."""
    notes = []
    ok = manifest["status"] == "ok"
    rejected = manifest[~ok]
    unlabeled = int((ok & manifest["label"].isna()).sum())
    named = label_frequencies(manifest["label"]).index
    lost = sorted(str(lab) for lab in named if lab not in label_counts.index)
    if lost:
        notes.append(
            f"{len(lost)} label(s) have no usable image left after rejection and are left out: "
            + ", ".join(repr(lab) for lab in lost[:10])
            + (" ..." if len(lost) > 10 else "")
        )
    single = sorted(str(lab) for lab, n in label_counts.items() if n == 1)
    if single:
        notes.append(
            f"{len(single)} label(s) have a single usable image (kept; their elements come from that image alone): "
            + ", ".join(repr(lab) for lab in single[:10])
            + (" ..." if len(single) > 10 else "")
        )
    conflicts = int(rejected["reason"].str.startswith("duplicate with another label").sum())
    if conflicts:
        notes.append(
            f"{conflicts} duplicate image(s) carry another label than their first copy: the first copy and its label are kept"
        )
    if missing:
        notes.append(f"{len(missing)} labelled file(s) not found among the images (ignored), e.g. {missing[:3]}")
    if unlabeled:
        notes.append(f"{unlabeled} usable image(s) have no label (used for the unconditional model only)")
    return notes


def _summary(
    manifest: pd.DataFrame,
    all_shards: list[dict],
    label_counts: pd.Series,
    missing: list[str],
    notes: list[str],
    resolution: int,
    policy: list,
    oblong: set[str],
    new_rows: list[dict],
    old_shards: list[dict],
) -> dict:
    """The ingest summary: counts, rejections by reason, labels, live shards, and the content keys
    of the live images (`images_key`) and of the labelled ones (`labels_key`)."""
    ok = manifest["status"] == "ok"
    live = manifest[ok]
    labelled = live.loc[live["label"].map(lambda v: isinstance(v, str)).astype(bool)]
    return {
        "images": len(manifest),
        "ok": int(ok.sum()),
        "rejected": int((~ok).sum()),
        "rejected_by_reason": dict(Counter(reason_kind(r) for r in manifest[~ok]["reason"])),
        "unlabeled": int((ok & manifest["label"].isna()).sum()),
        "missing_files": len(missing),
        "missing_examples": missing[:5],
        "labels": {str(k): int(v) for k, v in label_counts.items()},
        "multi_label": int(labelled["label"].str.contains(LABEL_JOIN, regex=False).sum()),
        "shards": _live_shards(all_shards, live),
        "new_images": len(new_rows),
        "reused_shards": len(old_shards),
        "images_key": content_key(
            sorted(live["image_id"]), resolution, *(policy if oblong.intersection(live["image_id"]) else [])
        ),
        "labels_key": content_key(sorted(zip(labelled["image_id"], labelled["label"]))),
        "notes": notes,
    }


def _log_outcome(
    log: logging.Logger | logging.LoggerAdapter,
    store: RunStore,
    manifest: pd.DataFrame,
    notes: list[str],
    new_images: int,
    reused_shards: int,
) -> None:
    """Log the first rejections, every note, and how many images were decoded and shards reused."""
    rejected = manifest[~(manifest["status"] == "ok")]
    for _, r in rejected.head(10).iterrows():
        log.warning("rejected %s: %s", r["source"], r["reason"])
    if len(rejected) > 10:
        log.warning("... and %d more rejected images (see %s)", len(rejected) - 10, store.uri(MANIFEST))
    for note in notes:
        log.warning("%s", note)
    if new_images or reused_shards:
        log.info("%d new image(s) decoded; %d shard(s) of an earlier run reused", new_images, reused_shards)


def _check_usable(
    images: str,
    labels: str | None,
    store: RunStore,
    manifest: pd.DataFrame,
    summary: dict,
    label_counts: pd.Series,
    max_labels: int,
) -> None:
    """`InputError` when no image is usable, or when the usable ones carry more than `max_labels`
    distinct labels (the manifest is written first, so the rejections can be read)."""
    if not summary["shards"]:
        raise InputError(
            f"no usable image in {images}: all {len(manifest)} were rejected ({summary['rejected_by_reason']}); "
            f"see {store.uri(MANIFEST)}"
        )
    if len(label_counts) > max_labels:
        raise InputError(
            f"{labels or images} gives {len(label_counts)} distinct labels to usable images, more than "
            f"data.max_labels = {max_labels} (e.g. {[str(x) for x in label_counts.index[:3]]}); "
            "check the label column, or raise data.max_labels"
        )


def _transient(task, task_run, state) -> bool:
    """Retry only I/O failures (a flaky disk or network), never bad input."""
    try:
        state.result()
    except (InputError, StorageError):  # bad input, or storage that already failed its own retries
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="ingest", task_run_name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def ingest(
    images: str,
    labels: str | None,
    out: str,
    data: DataConfig,
    storage_options: dict | None = None,
    multiple: int = 8,
) -> dict:
    """Prefect task: see `ingest_images` (`multiple`: what the long side of a working image is
    rounded to under data.resize=short_side, `Settings.working_multiple`)."""
    with stopwatch() as clock:
        summary = ingest_images(
            images, labels, RunStore(out, storage_options), data, storage_options, stage_logger(), multiple=multiple
        )
    return {**summary, "seconds": clock["seconds"]}
