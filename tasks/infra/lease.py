"""One writer at a time per run root: a lease object with an owner, a heartbeat and an expiry,
and an in-progress marker for readers.

`OUT/_lease.json` names the run that writes into the run root (host, pid, flow run id, start
time), a random token, when it was last renewed and its expiry. The holder renews it every
expiry/4 seconds from a background thread; a lease not renewed for `expiry` seconds (its run
crashed, was killed or lost the network) is presumed dead and may be taken over, so a crashed run
blocks the root for at most `expiry` seconds. A second run waits for the lease (polling, up to
`wait` seconds) or refuses at once; either way the message names the holder.

`OUT/_in_progress.json` is written once the lease is held and removed only when the run has
finished: while it exists the root is mid-update (its tables may mix two runs). `root_state`
tells a reader (the watcher, a report, an evaluation) whether the root is being updated now
(a live lease), was left mid-update by a run that failed (the marker without a live lease), or
is idle.

What is guaranteed (and on which storage):

- Local disks: the lease is created with an atomic hard link (`os.link` of a complete temporary
  file: it fails if the lease exists), so two runs that start together never both get it. Taking
  over an expired lease replaces it and reads it back after `SETTLE_SECONDS`: of several runs
  taking over the same dead lease at the same instant, the last writer keeps it.
- Object stores: the lease is created with a conditional PUT (`If-None-Match: *`), and renewed or
  taken over with `If-Match: <ETag>` (compare-and-swap); AWS S3 honours both since 2024, as do
  moto and recent MinIO. A store that ignores these headers would let the last writer win
  silently, so every write is also read back after `SETTLE_SECONDS` and counts only if it still
  holds this run's token ("write, then verify the owner"): mutual exclusion then holds unless
  a run takes longer than `SETTLE_SECONDS` between reading "no lease" and writing its own (a
  stalled process), which the next heartbeat detects as a lost lease.
- Expiry compares the holder's last renewal (its wall clock) with the reader's wall clock: the
  hosts that share a run root need clocks synchronised to well within `expiry` (NTP). A lease of
  a process of the same host (same host name) that is gone is dead at once. A run that fails on
  storage leaves its lease to expire rather than wait on the failing store to delete it.
- A holder that finds its lease taken over (it was cut off for longer than `expiry`) stops
  renewing it and its run fails at the end, saying that its artifacts may mix two runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from gcmine.tasks.infra.errors import RunRootBusy, StorageError
from gcmine.tasks.infra.storage import RunStore, is_local, pid_alive

__all__ = ["IN_PROGRESS", "LEASE", "RunLease", "describe_holder", "root_state", "run_lease"]

LEASE = "_lease.json"
IN_PROGRESS = "_in_progress.json"
SETTLE_SECONDS = 1.0  # a lease written without an atomic create is read back after this long
_log = logging.getLogger("gcmine.lease")


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def describe_holder(lease: dict) -> str:
    """One phrase naming the run of a lease or marker: 'flow run X (host h, pid p, started T)'."""
    run = lease.get("flow_run_id") or "(no flow run id)"
    renewed = lease.get("renewed")
    tail = f", last renewed {_iso(renewed)}" if isinstance(renewed, (int, float)) else ""
    return f"flow run {run} (host {lease.get('host')}, pid {lease.get('pid')}, started {lease.get('started')}{tail})"


def _expired(lease: dict, now: float) -> bool:
    """Whether nobody holds `lease` any more: not renewed for its expiry, or held by a process of
    this host that is gone (a run killed here a moment ago need not be waited for)."""
    renewed = lease.get("renewed")
    if not isinstance(renewed, (int, float)):
        return True  # damaged or foreign: nobody renews it
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) and not pid_alive(lease["pid"]):
        return True
    return now - renewed > float(lease.get("expiry") or 0)


class _Backend:
    """Create / compare-and-swap / read / delete of the lease object, local or on an object store."""

    def __init__(self, store: RunStore) -> None:
        self.store, self.local = store, is_local(store.fs)
        self.path = store.path(LEASE)
        self.if_match = True  # turned off if the store refuses If-Match

    def read(self) -> tuple[dict | None, str | None]:
        """(lease or None, its version: ETag on object stores, None locally). A lease that does
        not parse reads as {} (expired: it is replaced)."""
        fs = self.store.fs
        try:
            if self.local:
                with open(self.path, "rb") as fh:
                    raw, etag = fh.read(), None
            else:
                fs.invalidate_cache(self.path)  # another process may have replaced it since any listing
                info = self.store.retrying(f"checking {self.store.uri(LEASE)}", fs.info, self.path)
                etag = info.get("ETag")
                raw = self.store.retrying(f"reading {self.store.uri(LEASE)}", fs.cat_file, self.path, transfer=None)
        except FileNotFoundError:
            return None, None
        try:
            lease = json.loads(raw)
        except ValueError:
            lease = {}
        return (lease if isinstance(lease, dict) else {}), etag

    def create(self, lease: dict) -> bool:
        """Write the lease if there is none (atomically where the store allows); False if one exists."""
        data = json.dumps(lease, indent=2).encode()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    return False
                except OSError:  # no hard links on this filesystem: exclusive create instead
                    try:
                        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileExistsError:
                        return False
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                return True
            except OSError as err:
                raise StorageError(err.errno or 0, f"writing the lease {self.store.uri(LEASE)} failed: {err}") from err
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        try:
            self.store.retrying(
                f"writing {self.store.uri(LEASE)}",
                self.store.fs.pipe_file,
                self.path,
                data,
                mode="create",
                transfer=len(data),
            )
        except FileExistsError:  # 412 Precondition Failed on If-None-Match
            return False
        return True

    def swap(self, lease: dict, version: str | None) -> bool:
        """Replace the lease read at `version` (compare-and-swap where the store allows); False
        if it changed since."""
        data = json.dumps(lease, indent=2).encode()
        if self.local:
            self.store.write_bytes(LEASE, data)
            return True
        extra = {"IfMatch": version} if self.if_match and version else {}
        try:
            self.store.retrying(
                f"writing {self.store.uri(LEASE)}",
                self.store.fs.pipe_file,
                self.path,
                data,
                transfer=len(data),
                **extra,
            )
        except OSError as err:
            text = str(err).lower()
            if "pre-condition" in text or "precondition" in text:
                return False
            if extra and ("notimplemented" in text or "not implemented" in text):
                self.if_match = False  # a store without conditional writes: write, then verify the owner
                return self.swap(lease, version)
            raise
        return True

    def delete(self) -> None:
        self.store.remove(LEASE)


class RunLease:
    """The lease of one run root (see the module docstring). `wait`: seconds to wait for another
    holder (None: refuse at once); `expiry`: seconds without renewal after which a lease is dead."""

    def __init__(
        self,
        store: RunStore,
        *,
        flow_run_id: str | None = None,
        expiry: float = 120.0,
        wait: float | None = None,
        poll: float | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.store, self.backend = store, _Backend(store)
        self.expiry, self.wait = float(expiry), wait
        self.poll = poll if poll is not None else min(5.0, self.expiry / 4)
        self.log = logger or _log
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "flow_run_id": flow_run_id,
            "started": _iso(_now()),
            "token": uuid.uuid4().hex,
        }
        self.lost: str | None = None  # who took the lease over while this run held it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lease(self) -> dict:
        return {**self.owner, "renewed": _now(), "expiry": self.expiry}

    def _settled(self, atomic: bool) -> bool:
        """Whether the lease is this run's, read back (after `SETTLE_SECONDS` unless the write was atomic)."""
        if not atomic:
            time.sleep(SETTLE_SECONDS)
        found, _ = self.backend.read()
        return bool(found) and found.get("token") == self.owner["token"]

    def acquire(self) -> None:
        """Take the lease, waiting for a live holder up to `wait` seconds (or refusing at once)."""
        start = time.monotonic()
        said = -1.0
        while True:
            current, version = self.backend.read()
            if current is None:
                if self.backend.create(self._lease()) and self._settled(atomic=self.backend.local):
                    break
                continue
            if _expired(current, _now()):
                self.log.warning(
                    "taking over the lease of %s held by %s: not renewed for more than %s s (presumed dead)",
                    self.store.location,
                    describe_holder(current),
                    current.get("expiry"),
                )
                if self.backend.swap(self._lease(), version) and self._settled(atomic=False):
                    break
                continue
            waited = time.monotonic() - start
            if self.wait is None or waited >= self.wait:
                how = "storage.lease=refuse" if self.wait is None else f"waited {waited:.0f} s (storage.lease_wait)"
                raise RunRootBusy(
                    f"the run root {self.store.location} is being written by {describe_holder(current)}; "
                    f"{how}: run again when it has finished, or use another --out"
                )
            if said < 0 or waited - said >= 60:
                self.log.warning(
                    "waiting for the run root %s, written by %s", self.store.location, describe_holder(current)
                )
                said = waited
            time.sleep(min(self.poll, max(0.05, self.wait - waited)))
        self._thread = threading.Thread(target=self._heartbeat, name="gcmine-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.expiry / 4):
            try:
                current, version = self.backend.read()
                if not current or current.get("token") != self.owner["token"]:
                    self.lost = describe_holder(current) if current else "nobody (the lease was deleted)"
                    self.log.error(
                        "the lease of %s was taken over by %s: this run's results may mix with it",
                        self.store.location,
                        self.lost,
                    )
                    return
                if not self.backend.swap(self._lease(), version):
                    continue  # changed under us: the next beat reads who holds it
            except Exception as err:
                self.log.warning(
                    "renewing the lease of %s failed (retrying in %.0f s): %s",
                    self.store.location,
                    self.expiry / 4,
                    err,
                )

    def release(self, touch_storage: bool = True) -> None:
        """Stop renewing; delete the lease if it is still this run's. With `touch_storage` False
        (the store just failed: a stalled endpoint would only delay the error) the lease is left
        to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a renewal stuck on a stalled store is not waited for (daemon thread)
        if not touch_storage:
            return
        try:
            current, _ = self.backend.read()
            if current and current.get("token") == self.owner["token"]:
                self.backend.delete()
        except Exception as err:
            self.log.warning(
                "could not release the lease of %s (it expires in %.0f s): %s", self.store.location, self.expiry, err
            )


@contextlib.contextmanager
def run_lease(
    store: RunStore,
    *,
    flow_run_id: str | None,
    mode: str = "wait",
    wait: float = 3600.0,
    expiry: float = 120.0,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    marker: bool = True,
) -> Iterator[RunLease]:
    """Hold the lease of `store`'s root for the block, with the in-progress marker written while
    it runs and removed when it ends without error. `mode`: "wait" (up to `wait` seconds) or
    "refuse" (storage.lease, storage.lease_wait, storage.lease_expiry). `marker=False`: the lease
    alone, for a writer whose failure cannot leave the run's tables mixed (the evaluation: each
    table it writes is written whole), so that a failed attempt does not mark the root
    interrupted."""
    lease = RunLease(
        store, flow_run_id=flow_run_id, expiry=expiry, wait=wait if mode == "wait" else None, logger=logger
    )
    lease.acquire()
    storage_failed = False
    try:
        if marker:
            store.write_json(IN_PROGRESS, {k: v for k, v in lease.owner.items() if k != "token"})
        yield lease
        if lease.lost is not None:
            raise RunRootBusy(
                f"this run lost the lease of {store.location} to {lease.lost} while writing (it could not renew it for "
                f"storage.lease_expiry = {expiry:g} s): the run root may mix both runs' results; run the same command "
                "again once that run has finished"
            )
        if marker:
            store.remove(IN_PROGRESS)
    except StorageError:
        storage_failed = True
        raise
    finally:
        lease.release(touch_storage=not storage_failed)


def root_state(store: RunStore) -> dict:
    """What a reader should know before trusting the run root's tables: {"state": "idle"}, or
    {"state": "updating", "by": ...} (a run holds a live lease), or {"state": "interrupted",
    "by": ...} (a run started an update and did not finish it; rerunning completes it)."""
    lease, _ = _Backend(store).read()
    if lease and not _expired(lease, _now()):
        return {"state": "updating", "by": describe_holder(lease), "lease": lease}
    if store.exists(IN_PROGRESS):
        try:
            marker = store.read_json(IN_PROGRESS)
        except StorageError:
            marker = {}
        return {"state": "interrupted", "by": describe_holder(marker), "marker": marker}
    return {"state": "idle"}
