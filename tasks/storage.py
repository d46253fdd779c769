"""Run-root storage over fsspec: local paths, ``file://`` or ``s3://`` URIs.

Writes are atomic: locally the bytes go to a temporary sibling that is renamed into place; on
object stores each object is written whole by a single PUT. Relative artifact names are checked
so that nothing is ever written outside the run root.

Object-store calls are retried with exponential backoff (`RETRIES` attempts after the first,
waiting `BACKOFF_SECONDS` x 1, 2, 4, ...) unless the error is permanent (missing object, access
denied, bad argument); after the last attempt a `StorageError` names the URI. Local I/O is not
retried (a full disk stays full): it fails at once with a `StorageError` naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import StorageError

__all__ = ["BACKOFF_SECONDS", "RETRIES", "RunStore", "is_local", "join_uri", "open_fs", "with_retries"]

RETRIES = 4  # retries of a failed object-store call (5 attempts in all)
BACKOFF_SECONDS = 0.5  # first wait; doubled after each failed attempt (0.5 + 1 + 2 + 4 s)
_PERMANENT = (
    FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
    ValueError, TypeError, KeyError, AttributeError, NotImplementedError, StorageError,
)
_log = logging.getLogger("gcmine.storage")


def with_retries(fs: fsspec.AbstractFileSystem, what: str, call: Callable, *args, **kwargs):
    """`call(*args, **kwargs)`, retried with backoff on transient errors of an object store.
    `what` ("writing s3://b/x") names the operation in the log and in the final `StorageError`.
    Local filesystems get one attempt; permanent errors (missing file, access denied) are re-raised."""
    attempts = 1 if is_local(fs) else RETRIES + 1
    wait = BACKOFF_SECONDS
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call(*args, **kwargs)
        except _PERMANENT:
            raise
        except Exception as err:  # noqa: BLE001 - network and server errors come in many types
            if attempt == attempts:
                raise StorageError(
                    getattr(err, "errno", None) or 0,
                    f"{what} failed after {attempts} attempt(s) over {time.monotonic() - start:.1f} s: "
                    f"{type(err).__name__}: {err}",
                ) from err
            _log.warning("%s failed (attempt %d of %d, retrying in %.1f s): %s", what, attempt, attempts, wait, err)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def open_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `uri` and the path within it (a local path is made absolute).
    `storage_options` apply to remote URIs only."""
    remote = fsspec.utils.get_protocol(uri) not in ("file", "local")
    fs, path = fsspec.core.url_to_fs(uri, **((storage_options or {}) if remote else {}))
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join_uri(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel.lstrip("/")


class RunStore:
    """Reads and writes the artifacts of one run root."""

    def __init__(self, root: str, storage_options: dict | None = None) -> None:
        self.root_uri = root
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = open_fs(root, self.storage_options)
        self.protocol = "file" if is_local(self.fs) else (self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0])

    # -------------------------------------------------------------- names
    def path(self, rel: str) -> str:
        """Path of artifact `rel` inside the root; refuses names that would leave the root."""
        parts = rel.replace("\\", "/").split("/")
        norm = posixpath.normpath(rel.replace("\\", "/"))
        if not rel or rel.startswith(("/", "\\")) or ".." in parts or norm in (".", ""):
            raise ValueError(f"artifact name {rel!r} is not a relative path inside the run root")
        return posixpath.join(self.root, norm)

    def uri(self, rel: str) -> str:
        """URI of artifact `rel` (a file:// URI for local roots, so links open from a browser)."""
        p = self.path(rel)
        return Path(p).as_uri() if is_local(self.fs) else f"{self.protocol}://{p}"

    # -------------------------------------------------------------- bytes
    def exists(self, rel: str) -> bool:
        return with_retries(self.fs, f"checking {self.uri(rel)}", self.fs.exists, self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if is_local(self.fs):
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError as err:
                raise StorageError(
                    err.errno or 0, f"writing {self.uri(rel)} failed: {err.strerror or err}; its previous version (if any) is kept"
                ) from err
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with_retries(self.fs, f"writing {self.uri(rel)}", self.fs.pipe_file, path, data)

    def read_bytes(self, rel: str) -> bytes:
        return with_retries(self.fs, f"reading {self.uri(rel)}", self.fs.cat_file, self.path(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    # -------------------------------------------------------------- tables
    def write_parquet(self, rel: str, df: pd.DataFrame, **options: Any) -> None:
        """zstd Parquet; `options` go to `pyarrow.parquet.write_table` (e.g. per-column encodings)."""
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd", **options)
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        if is_local(self.fs):
            with self.fs.open(self.path(rel), "rb") as fh:
                return pq.read_table(fh, columns=columns).to_pandas()
        # One GET, retried as a whole: a partial read never reaches the Parquet reader.
        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns).to_pandas()

    def read_parts(self, folder: str, names: list[str], columns: list[str] | None = None) -> pd.DataFrame:
        """Concatenate the Parquet parts `names` of `folder`."""
        frames = [self.read_parquet(f"{folder}/{name}", columns) for name in names]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    # -------------------------------------------------------------- directories (models)
    def put_dir(self, local_dir: str | Path, rel: str) -> None:
        """Publish a local directory as artifact folder `rel` (replacing the previous one)."""
        target = self.path(rel)
        if is_local(self.fs):
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            staging = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                shutil.copytree(local_dir, staging)
            except OSError as err:
                shutil.rmtree(staging, ignore_errors=True)
                raise StorageError(
                    getattr(err, "errno", None) or 0,
                    f"writing folder {self.uri(rel)} failed: {err}; its previous version (if any) is kept",
                ) from err
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            old = f"{target}.old-{uuid.uuid4().hex}"
            if os.path.exists(target):
                os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # Object stores have no rename: upload every object whole, the `_`-prefixed
            # completion marker(s) last, so a reader that checks the marker never sees half a folder.
            markers = with_retries(self.fs, f"listing {self.uri(rel)}", self.fs.glob, posixpath.join(target, "_*"))
            for old_marker in markers:
                # the folder is incomplete until the new marker lands
                with_retries(self.fs, f"removing {old_marker}", self.fs.rm, old_marker)
            files = sorted((p for p in Path(local_dir).rglob("*") if p.is_file()), key=lambda p: (p.name.startswith("_"), str(p)))
            for src in files:
                rel_file = src.relative_to(local_dir).as_posix()
                dest = posixpath.join(target, rel_file)
                with_retries(self.fs, f"uploading {self.uri(rel)}/{rel_file}", self.fs.put_file, str(src), dest)

    def local_dir(self, rel: str, cache: str | Path | None = None) -> Path:
        """A local directory holding artifact folder `rel` (the folder itself when local)."""
        path = self.path(rel)
        if is_local(self.fs):
            if not os.path.isdir(path):
                raise FileNotFoundError(f"artifact folder {self.uri(rel)} does not exist")
            return Path(path)
        dest = Path(cache or tempfile.mkdtemp(prefix="gcmine-"))
        with_retries(self.fs, f"downloading {self.uri(rel)}", self.fs.get, path + "/", str(dest), recursive=True)
        return dest
