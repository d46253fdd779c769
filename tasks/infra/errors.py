"""Errors gcmine explains to the user (the CLI prints them without a traceback).

- `InputError`: the images or labels cannot be used; the message names the file, row, column.
- `StorageError`: an artifact or image could not be read or written (after retries on object
  stores); the message names the URI and says what was kept.
- `StorageAccessError`: the store refused access (credentials, permissions, missing bucket); the
  message names the URI and what to check (a setting to fix: exit 2).
- `DamagedArtifact`: a file of the run root cannot be trusted (truncated, checksum mismatch);
  the message names it and says what to do.
- `RunRootBusy`: another run holds the run root's lease; the message names it.
- `OutOfMemory`: the device ran out of memory; the message names the setting to lower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "DamagedArtifact",
    "InputError",
    "OutOfMemory",
    "RunRootBusy",
    "StorageAccessError",
    "StorageError",
    "out_of_memory_hint",
]


class InputError(ValueError):
    """The images or labels given by the user cannot be used; the message names the file."""


class StorageError(OSError):
    """Reading or writing a URI failed for good; the message names it."""

    def __str__(self) -> str:  # the message alone, without "[Errno N] "
        return self.strerror if isinstance(self.strerror, str) and self.strerror else super().__str__()


class StorageAccessError(StorageError):
    """The object store refused access or has no such bucket; the message says what to check."""


class DamagedArtifact(StorageError):
    """An artifact of the run root is damaged (truncated, corrupt); the message names it and what to do."""


class RunRootBusy(RuntimeError):
    """Another run holds the lease of the run root (it is writing there); the message names it."""


class OutOfMemory(RuntimeError):
    """The accelerator (or the host) ran out of memory; the message names the setting to lower."""


def _is_oom(err: BaseException) -> bool:
    import torch

    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


@contextlib.contextmanager
def out_of_memory_hint(stage: str, settings: dict[str, object], device: object = None) -> Iterator[None]:
    """Turn an out-of-memory error raised inside the block into `OutOfMemory`, whose message
    names `settings` (dotted name -> current value), the ones to lower, and the device."""
    try:
        yield
    except Exception as err:
        if not _is_oom(err) or isinstance(err, OutOfMemory):
            raise
        lower = " or ".join(f"{name} (now {value})" for name, value in settings.items())
        where = f" on {device}" if device is not None else ""
        raise OutOfMemory(
            f"{stage} ran out of memory{where}: lower {lower} and run the same command again "
            f"(finished stages are reused); original error: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
