"""The resumable state of an unfinished fine-tuning: `checkpoints/finetune.pt` in the run root,
written atomically (a failed write keeps the previous one), read back on the CPU, dropped once the
model it would resume is published."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from gcmine.tasks.infra.errors import StorageError
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore, is_local, scratch_dir

__all__ = ["CHECKPOINT", "drop_checkpoint", "read_checkpoint", "write_checkpoint"]

CHECKPOINT = "checkpoints/finetune.pt"  # the resumable state of an unfinished training


def write_checkpoint(store: RunStore, payload: dict) -> None:
    """Save `payload` as `CHECKPOINT` atomically: locally torch.save to a temporary sibling renamed
    into place, on an object store a local temporary file uploaded whole (one PUT). A failed write
    (a full disk) is a `StorageError` naming the checkpoint; the previous one stays in place."""
    path = store.path(CHECKPOINT)
    if is_local(store.fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save(payload, tmp)
            os.replace(tmp, path)
        except OSError as err:
            raise _checkpoint_error(store, err) from err
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with scratch_dir("checkpoint") as tmp:
        local = Path(tmp) / "finetune.pt"
        try:
            _save(payload, local)
        except OSError as err:
            raise _checkpoint_error(store, err, staged=local) from err
        store.retrying(
            f"uploading {store.uri(CHECKPOINT)}", store.fs.put_file, str(local), path, transfer=local.stat().st_size
        )


def _checkpoint_error(store: RunStore, err: OSError, staged: Path | None = None) -> StorageError:
    where = f" (staged in {staged})" if staged is not None else ""
    return StorageError(
        err.errno or 0,
        f"writing the training checkpoint {store.uri(CHECKPOINT)}{where} failed: {err.strerror or err}; the previous "
        "checkpoint (if any) is kept: free space (or fix the cause) and run the same command again to resume from it",
    )


def _save(payload: dict, target: str | Path) -> None:
    """torch.save; a failed write is an OSError. A full disk surfaces inside torch's writer as a
    RuntimeError that names no file and is no OSError ("[enforce fail at inline_container.cc:672]
    . unexpected pos 704 vs 598", "PytorchStreamWriter failed writing file data/0", "basic_ios::
    clear: iostream error"); a payload that cannot be pickled raises other errors."""
    try:
        torch.save(payload, target)
    except RuntimeError as err:
        text = str(err).strip()
        detail = text.splitlines()[0] if text else "write failed"
        raise OSError(0, f"the write failed, is the disk full? (torch: {detail})") from err


def read_checkpoint(store: RunStore) -> dict | None:
    """The payload of `CHECKPOINT` (tensors on the CPU), or None when there is none or it cannot
    be read (a checkpoint is never worth failing a run for: the training starts afresh)."""
    if not store.exists(CHECKPOINT):
        return None
    try:
        if is_local(store.fs):
            return torch.load(store.path(CHECKPOINT), map_location="cpu", weights_only=True)
        with scratch_dir("checkpoint") as tmp:
            local = Path(tmp) / "finetune.pt"
            store.retrying(
                f"downloading {store.uri(CHECKPOINT)}",
                store.fs.get_file,
                store.path(CHECKPOINT),
                str(local),
                transfer=None,
            )
            return torch.load(local, map_location="cpu", weights_only=True)
    except StorageError:
        raise  # the store failed (not the file): the run cannot go on
    except Exception as err:
        stage_logger().warning("ignoring the unreadable checkpoint %s: %s", store.uri(CHECKPOINT), err)
        return None


def drop_checkpoint(store: RunStore) -> None:
    """Remove `CHECKPOINT` (once the model it would resume is published)."""
    if store.exists(CHECKPOINT):
        store.retrying(f"removing {store.uri(CHECKPOINT)}", store.fs.rm, store.path(CHECKPOINT))
        if is_local(store.fs):
            try:
                os.rmdir(os.path.dirname(store.path(CHECKPOINT)))  # leave no empty folder behind
            except OSError:
                pass  # not empty (something else lives there)
