"""Integrity of what a run reuses: an artifact is verified before it is trusted.

- Parquet artifacts carry a CRC-32 per data page, recorded at write time (`RunStore.write_parquet`)
  and verified by every read (`RunStore.read_parquet`). Before a cached one is reused,
  `parquet_damage` checks its structure from the footer alone (magic bytes, footer, every column
  chunk inside the file: catches truncation, the usual damage, for the price of one small read)
  and, for files up to `FULL_CHECK_BYTES`, reads it whole with its page checksums verified.
- Model folders record each file's size and SHA-256 in their `_COMPLETE.json` marker
  (`file_records`, written by finetune); `model_damage` compares them (sizes from one listing on
  an object store; the SHA-256 of every file on a local disk, streamed), and a downloaded copy
  is hashed before it is loaded (tasks/infra/models.py).
- Other files (JSON) are checked to parse.

A damaged artifact is reported as a reason ("truncated: ..."), never an exception: the caller
recomputes it with a warning naming it (tasks/infra/caching.py, tasks/ingest.py, tasks/finetune.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gcmine.tasks.infra.errors import DamagedArtifact
from gcmine.tasks.infra.storage import RunStore, is_local

__all__ = [
    "FOOTER_TAIL",
    "FULL_CHECK_BYTES",
    "artifact_damage",
    "file_digest",
    "file_records",
    "footer_damage",
    "model_damage",
    "parquet_damage",
]

FULL_CHECK_BYTES = 64 * 2**20  # cached Parquet files up to this size are read whole (page checksums) before reuse
CHUNK = 2**20  # bytes hashed at a time: a multi-GB weight file never sits in memory whole
FOOTER_TAIL = 64 * 2**10  # tail bytes read first; a larger footer costs a second read


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a local file, read in `CHUNK`s."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_records(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Relative path -> {"bytes", "sha256"} of every file under `directory` (names in `skip` left out)."""
    return {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def footer_damage(size: int, tail: bytes) -> str | None:
    """What is wrong with a Parquet file of `size` bytes ending in `tail`, judged from its footer."""
    if size < 12 or tail[-4:] != b"PAR1":
        return f"truncated or not Parquet ({size} bytes, no Parquet end marker)"
    footer_len = struct.unpack("<i", tail[-8:-4])[0]
    if footer_len <= 0 or footer_len + 12 > size:
        return f"truncated (footer of {footer_len} bytes in a {size}-byte file)"
    if footer_len + 8 > len(tail):
        return None  # caller reads more
    try:
        meta = pq.read_metadata(io.BytesIO(b"PAR1" + tail[-(footer_len + 8) :]))
    except (pa.ArrowException, OSError) as err:
        return f"unreadable footer ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    data_end = size - footer_len - 8
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.total_compressed_size == 0:
                continue  # an empty column chunk (a table of no rows) has no pages
            offsets = [
                o for o in (col.dictionary_page_offset if col.has_dictionary_page else None, col.data_page_offset) if o
            ]
            start = min(offsets) if offsets else 0
            if start < 4 or start + col.total_compressed_size > data_end:
                return f"truncated or overwritten (column chunk {col.path_in_schema} of row group {g} lies outside the file)"
    return None


def parquet_damage(store: RunStore, rel: str, full_below: int = FULL_CHECK_BYTES) -> str | None:
    """None if artifact `rel` (Parquet) looks sound, else what is wrong: its footer and layout
    (one read of its tail), and - when it is at most `full_below` bytes - every page checksum."""
    size, tail = store.read_tail(rel, FOOTER_TAIL)
    reason = footer_damage(size, tail)
    if reason is None and size >= 12 and struct.unpack("<i", tail[-8:-4])[0] + 8 > len(tail):
        size, tail = store.read_tail(rel, struct.unpack("<i", tail[-8:-4])[0] + 8)  # a big footer: read it whole
        reason = footer_damage(size, tail)
    if reason is not None or size > full_below:
        return reason
    try:
        store.read_table(rel)  # every page, checksums verified
    except DamagedArtifact as err:
        return getattr(err, "reason", str(err))
    return None


def artifact_damage(store: RunStore, rel: str) -> str | None:
    """None if artifact `rel` exists and looks sound, else what is wrong ("missing" if absent)."""
    if not store.exists(rel):
        return "missing"
    if rel.endswith(".parquet"):
        return parquet_damage(store, rel)
    if rel.endswith(".json"):
        try:
            json.loads(store.read_bytes(rel))
        except ValueError as err:
            return f"not valid JSON ({err})"
    return None


def model_damage(store: RunStore, folder: str, marker: dict, fingerprint_of=None) -> str | None:
    """None if model folder `folder` holds the files its `_COMPLETE.json` `marker` records, else
    the first difference ("unet/x.safetensors: 1024 bytes, 3417 recorded"). Local roots: sizes
    and SHA-256 of every file; object stores: sizes from one listing (the bytes are hashed when a
    copy is downloaded to be loaded). Markers written before file records existed: the folder's
    `fingerprint_of(directory)` (local) is compared with the marker's fingerprint."""
    records = marker.get("files")
    if records is None:
        if fingerprint_of is None or not is_local(store.fs):
            return None
        found = fingerprint_of(Path(store.path(folder)))
        return (
            None
            if found == marker.get("fingerprint")
            else f"its files hash to {found}, not to the recorded {marker.get('fingerprint')}"
        )
    sizes = store.list_files(folder)
    for name, rec in records.items():
        if name not in sizes:
            return f"{name}: missing"
        if sizes[name] != rec["bytes"]:
            return f"{name}: {sizes[name]} bytes, {rec['bytes']} recorded"
    if is_local(store.fs):
        return local_records_damage(Path(store.path(folder)), records)
    return None


def local_records_damage(directory: Path, records: dict[str, dict]) -> str | None:
    """The first file of `records` whose size or SHA-256 differs under local `directory`, as a reason."""
    for name, rec in records.items():
        path = directory / name
        if not path.is_file():
            return f"{name}: missing"
        if path.stat().st_size != rec["bytes"]:
            return f"{name}: {path.stat().st_size} bytes, {rec['bytes']} recorded"
        if file_digest(path) != rec["sha256"]:
            return f"{name}: its SHA-256 differs from the one recorded when it was written"
    return None
