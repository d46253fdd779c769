"""Run-root storage over fsspec: local paths, ``file://`` or ``s3://`` URIs.

Writes are atomic: locally the bytes go to a temporary sibling that is renamed into place; on
object stores each object is written whole by a single PUT. Relative artifact names are checked
so that nothing is ever written outside the run root.

One retry policy, this module's: object-store calls are retried with exponential backoff
(`StoragePolicy.retries` attempts after the first, waiting `BACKOFF_SECONDS` x 1, 2, 4, ...)
unless the error is permanent (missing object, access denied, bad argument), and no attempt
starts after the policy's deadline; botocore's and s3fs's own retries are switched off (they
multiplied this policy's attempts) and botocore's connect / read timeouts are set (see
`gcmodels.config.StorageConfig`), so a stalled endpoint fails an attempt instead of hanging.
Writes and metadata calls of an asynchronous filesystem (s3fs) are also cut at the deadline
(plus a second per MiB sent): a PUT waiting for a `100 Continue` that never comes is not bounded
by the read timeout. After the last attempt a `StorageError` names the URI; access errors
(denied, wrong credentials, missing bucket) are a `StorageAccessError` saying what to check.
Local I/O is not retried (a full disk stays full): it fails at once with a `StorageError`
naming the file.

Temporary local copies (a model downloaded from S3, a checkpoint staged for upload) live in
`scratch_dir` folders of the system temp folder, removed after use; `sweep_scratch` removes
those of processes that died, `sweep_leftovers` the temporary siblings interrupted writes left
in a run root.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from gcmine.tasks.infra.errors import DamagedArtifact, StorageAccessError, StorageError
from gcmodels.config import STORAGE_POLICY_KEY as POLICY_KEY
from gcmodels.config import StorageConfig

__all__ = [
    "BACKOFF_SECONDS",
    "POLICY_KEY",
    "RETRIES",
    "RunStore",
    "StoragePolicy",
    "damaged_hint",
    "is_local",
    "join_uri",
    "open_fs",
    "pid_alive",
    "policy_of",
    "scratch_dir",
    "sweep_leftovers",
    "sweep_scratch",
    "with_retries",
]

RETRIES: int = StorageConfig.model_fields[
    "retries"
].default  # retries of a failed object-store call (5 attempts in all)
BACKOFF_SECONDS = 0.5  # first wait; doubled after each failed attempt (0.5 + 1 + 2 + 4 s)
DEADLINE_SECONDS: float = StorageConfig.model_fields[
    "deadline"
].default  # no retry starts later than this after the first
SECONDS_PER_MIB = 1.0  # a write's hard cap grows by this per MiB sent (big uploads are not cut)
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    NotImplementedError,
    StorageError,
)
_log = logging.getLogger("gcmine.storage")


@dataclass(frozen=True)
class StoragePolicy:
    """How long gcmine keeps trying an object-store operation: `retries` after the first attempt,
    none started more than `deadline` seconds after the first."""

    retries: int = RETRIES
    deadline: float = DEADLINE_SECONDS


def policy_of(storage_options: dict | None) -> StoragePolicy:
    """The `StoragePolicy` carried by storage options (`StorageConfig.store_options()`), or the defaults."""
    given = (storage_options or {}).get(POLICY_KEY) or {}
    return StoragePolicy(**{k: given[k] for k in ("retries", "deadline") if k in given})


def _bucket_missing(err: BaseException) -> bool:
    while err is not None:
        code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
        if code == "NoSuchBucket" or "bucket does not exist" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def _access_error(what: str, err: BaseException) -> StorageAccessError | None:
    """The one-line `StorageAccessError` for an access problem of an object store (denied, wrong
    credentials, missing bucket), or None for other errors."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, PermissionError) or any(
        code in str(err) for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken")
    ):
        return StorageAccessError(
            getattr(err, "errno", None) or 13,
            f"{what}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or storage.key / storage.secret / storage.profile), the endpoint (storage.endpoint_url, "
            "AWS_ENDPOINT_URL) and that they may read and write this location",
        )
    if isinstance(err, FileNotFoundError) and _bucket_missing(err):
        return StorageAccessError(
            getattr(err, "errno", None) or 2,
            f"{what}: the bucket does not exist ({text}); check the URI, and the endpoint (storage.endpoint_url, "
            "AWS_ENDPOINT_URL) and region (storage.region) it is looked up at",
        )
    return None


def _cap(fs: fsspec.AbstractFileSystem, call: Callable, remaining: float, transfer: int | None) -> dict:
    """`timeout=` for one attempt of `call` when it is a method of an asynchronous filesystem
    (fsspec's sync wrapper then cancels it): the time left to the deadline, plus
    `SECONDS_PER_MIB` per MiB of a write; nothing for reads of unknown size (`transfer` None),
    which botocore's read timeout bounds."""
    # fsspec's sync wrappers are instance attributes named like the coroutine they wrap, minus its "_"
    own = getattr(fs, getattr(call, "__name__", "").lstrip("_"), None) == call
    if transfer is None or not getattr(fs, "async_impl", False) or not own:
        return {}
    return {"timeout": max(1.0, remaining + SECONDS_PER_MIB * transfer / 2**20)}


def with_retries(
    fs: fsspec.AbstractFileSystem,
    what: str,
    call: Callable,
    *args,
    policy: StoragePolicy | None = None,
    transfer: int | None = 0,
    **kwargs,
):
    """`call(*args, **kwargs)`, retried with backoff on transient errors of an object store.
    `what` ("writing s3://b/x") names the operation in the log and in the final `StorageError`.
    Local filesystems get one attempt; permanent errors (missing file, access denied) are
    re-raised at once, access errors as a `StorageAccessError`. `policy` bounds the attempts and
    the time (see `StoragePolicy`); `transfer` is the bytes a write sends (None: a read of
    unknown size), see `_cap`."""
    policy = policy or StoragePolicy()
    local = is_local(fs)
    attempts = 1 if local else policy.retries + 1
    wait = BACKOFF_SECONDS
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        elapsed = time.monotonic() - start
        try:
            cap = {} if local else _cap(fs, call, policy.deadline - elapsed, transfer)
            return call(*args, **kwargs, **cap)
        except _PERMANENT as err:
            access = None if local else _access_error(what, err)
            if access is not None:
                raise access from err
            raise
        except Exception as err:
            access = None if local else _access_error(what, err)
            if access is not None:
                raise access from err
            elapsed = time.monotonic() - start
            timed_out = type(err).__name__ in ("FSTimeoutError", "TimeoutError") and not str(err)
            detail = f"no answer within {elapsed:.1f} s" if timed_out else f"{type(err).__name__}: {err}"
            if attempt == attempts or elapsed + wait >= policy.deadline:
                limit = "" if attempt == attempts else f" (storage.deadline {policy.deadline:g} s reached)"
                raise StorageError(
                    getattr(err, "errno", None) or 0,
                    f"{what} failed after {attempt} attempt(s) over {elapsed:.1f} s{limit}: {detail}",
                ) from err
            _log.warning("%s failed (attempt %d of %d, retrying in %.1f s): %s", what, attempt, attempts, wait, detail)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def open_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `uri` and the path within it (a local path is made absolute).
    `storage_options` apply to remote URIs only (their `POLICY_KEY` entry is gcmine's, not the
    filesystem's); s3fs's own retry loop is switched off (see the module docstring)."""
    remote = fsspec.utils.get_protocol(uri) not in ("file", "local")
    options = {k: v for k, v in (storage_options or {}).items() if k != POLICY_KEY} if remote else {}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    elif hasattr(fs, "retries"):  # s3fs: one attempt per call, gcmine's with_retries is the one retry policy
        fs.retries = 1
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
        self.policy = policy_of(self.storage_options)
        self.fs, self.root = open_fs(root, self.storage_options)
        self.protocol = (
            "file"
            if is_local(self.fs)
            else (self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0])
        )

    def retrying(self, what: str, call: Callable, *args, transfer: int | None = 0, **kwargs):
        """`with_retries` under this store's policy."""
        return with_retries(self.fs, what, call, *args, policy=self.policy, transfer=transfer, **kwargs)

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

    @property
    def location(self) -> str:
        """URI of the run root itself (file:// when local)."""
        return Path(self.root).as_uri() if is_local(self.fs) else f"{self.protocol}://{self.root}"

    # -------------------------------------------------------------- bytes
    def exists(self, rel: str) -> bool:
        return self.retrying(f"checking {self.uri(rel)}", self.fs.exists, self.path(rel))

    def size(self, rel: str) -> int:
        return int(self.retrying(f"checking {self.uri(rel)}", self.fs.size, self.path(rel)))

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
                    err.errno or 0,
                    f"writing {self.uri(rel)} failed: {err.strerror or err}; its previous version (if any) is kept",
                ) from err
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self.retrying(f"writing {self.uri(rel)}", self.fs.pipe_file, path, data, transfer=len(data))

    def read_bytes(self, rel: str) -> bytes:
        return self.retrying(f"reading {self.uri(rel)}", self.fs.cat_file, self.path(rel), transfer=None)

    def read_tail(self, rel: str, length: int) -> tuple[int, bytes]:
        """(size of artifact `rel`, its last `length` bytes): a Parquet footer without the file."""
        size = self.size(rel)
        start = max(0, size - length)
        tail = self.retrying(
            f"reading {self.uri(rel)}", self.fs.cat_file, self.path(rel), start=start, end=size, transfer=None
        )
        return size, tail

    def remove(self, rel: str) -> None:
        """Remove artifact `rel` (a file) if it exists."""
        if self.exists(rel):
            self.retrying(f"removing {self.uri(rel)}", self.fs.rm, self.path(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode())

    def read_json(self, rel: str) -> Any:
        raw = self.read_bytes(rel)
        try:
            return json.loads(raw)
        except ValueError as err:  # truncated or overwritten
            raise DamagedArtifact(
                0, f"{self.uri(rel)} is damaged (not valid JSON: {err}); delete it and run the same command again"
            ) from None

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    # -------------------------------------------------------------- tables
    def write_parquet(self, rel: str, df: pd.DataFrame, **options: Any) -> None:
        """zstd Parquet with page checksums (CRC-32 of every data page, recorded at write time and
        verified by every read); `options` go to `pyarrow.parquet.write_table` (e.g. per-column encodings)."""
        buf = io.BytesIO()
        pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd", write_page_checksum=True, **options
        )
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Artifact `rel` as a DataFrame; its page checksums are verified, and a damaged file is a
        `DamagedArtifact` naming it (see `damaged_hint` for what the message advises)."""
        return self.read_table(rel, columns).to_pandas()

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Artifact `rel` as an Arrow table, page checksums verified (see `read_parquet`)."""
        try:
            if is_local(self.fs):
                with self.fs.open(self.path(rel), "rb") as fh:
                    return pq.read_table(fh, columns=columns, page_checksum_verification=True)
            # One GET, retried as a whole: a partial read never reaches the Parquet reader.
            data = io.BytesIO(self.read_bytes(rel))
            return pq.read_table(data, columns=columns, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as err:
            if isinstance(err, (StorageError, FileNotFoundError, PermissionError)) or not _arrow_damage(err):
                raise
            damaged = DamagedArtifact(0, f"{self.uri(rel)} is damaged ({_first_line(err)}); {damaged_hint(rel)}")
            damaged.reason = _first_line(err)
            raise damaged from None

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
            markers = self.retrying(f"listing {self.uri(rel)}", self.fs.glob, posixpath.join(target, "_*"))
            for old_marker in markers:
                # the folder is incomplete until the new marker lands
                self.retrying(f"removing {old_marker}", self.fs.rm, old_marker)
            files = sorted(
                (p for p in Path(local_dir).rglob("*") if p.is_file()), key=lambda p: (p.name.startswith("_"), str(p))
            )
            for src in files:
                rel_file = src.relative_to(local_dir).as_posix()
                dest = posixpath.join(target, rel_file)
                self.retrying(
                    f"uploading {self.uri(rel)}/{rel_file}",
                    self.fs.put_file,
                    str(src),
                    dest,
                    transfer=src.stat().st_size,
                )

    def list_files(self, rel: str) -> dict[str, int]:
        """Path (relative to folder `rel`) -> size of every file under artifact folder `rel`."""
        base = self.path(rel)
        found = self.retrying(f"listing {self.uri(rel)}", self.fs.find, base, detail=True)
        return {
            posixpath.relpath(p, base): int(info.get("size") or 0)
            for p, info in found.items()
            if info.get("type") != "directory"
        }

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[Path]:
        """A local directory holding artifact folder `rel`: the folder itself when the root is
        local, else a download into a `scratch_dir`, removed when the block ends (load what you
        need inside it: nothing is left outside the run root)."""
        path = self.path(rel)
        if is_local(self.fs):
            if not os.path.isdir(path):
                raise FileNotFoundError(f"artifact folder {self.uri(rel)} does not exist")
            yield Path(path)
            return
        with scratch_dir("download") as dest:
            self.retrying(
                f"downloading {self.uri(rel)}", self.fs.get, path + "/", str(dest), recursive=True, transfer=None
            )
            yield dest


# ------------------------------------------------------------------ damage
def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _arrow_damage(err: BaseException) -> bool:
    """Whether an error of the Parquet reader says the file itself is damaged."""
    if isinstance(err, pa.ArrowException) and not isinstance(err, OSError):
        return True
    text = str(err).lower()
    return any(k in text for k in ("parquet", "checksum", "magic bytes", "footer", "thrift", "page", "corrupt", "eof"))


def damaged_hint(rel: str) -> str:
    """What to do about damaged artifact `rel` (one sentence)."""
    if rel.startswith("images/"):
        return "delete it and run the same command again: its images are decoded again from the sources"
    if rel.startswith("model/"):
        return "delete the model folder and run the same command again: the model is trained again"
    return "delete it and run the same command again: it is recomputed (a rerun also detects and replaces it)"


# ------------------------------------------------------------------ scratch folders, leftovers
_SCRATCH = re.compile(r"^gcmine-scratch-(?P<purpose>[a-z]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LEFTOVER = re.compile(r"\.(tmp|old)-[0-9a-f]{32}$")


@contextlib.contextmanager
def scratch_dir(purpose: str) -> Iterator[Path]:
    """A new folder in the system temp folder for local copies (`gcmine-scratch-PURPOSE-PID-*`),
    removed when the block ends; `sweep_scratch` removes those of dead processes."""
    path = Path(tempfile.mkdtemp(prefix=f"gcmine-scratch-{purpose}-{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_scratch(older_than: float = 600.0) -> list[str]:
    """Remove this user's `scratch_dir` folders left by processes that are gone (killed before
    their cleanup ran) and untouched for `older_than` seconds; return their paths."""
    root, removed, now = Path(tempfile.gettempdir()), [], time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in root.iterdir() if root.is_dir() else []:
        m = _SCRATCH.match(entry.name)
        if not m:
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if (uid is not None and st.st_uid != uid) or now - st.st_mtime < older_than or pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(str(entry))
    return removed


def sweep_leftovers(store: RunStore, older_than: float) -> list[str]:
    """Remove what interrupted atomic writes left in a local run root: temporary siblings
    (`NAME.tmp-<32 hex>`, files or model folders) and replaced folders (`model.old-<32 hex>`),
    gcmine's names only, untouched for `older_than` seconds. Object stores have none (objects are
    written whole). Returns the URIs removed."""
    if not is_local(store.fs) or not os.path.isdir(store.root):
        return []
    removed, now = [], time.time()
    for folder, dirs, files in os.walk(store.root):
        for name in [*dirs, *files]:
            if not _LEFTOVER.search(name):
                continue
            path = os.path.join(folder, name)
            try:
                if now - os.lstat(path).st_mtime < older_than:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            except OSError:
                continue
            removed.append(Path(path).as_uri())
        dirs[:] = [d for d in dirs if not _LEFTOVER.search(d)]
    return removed
