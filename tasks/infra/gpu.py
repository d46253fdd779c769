"""One GPU stage per card at a time: a process-local lock per device, and a slot of a Prefect
concurrency limit (`runtime.gpu_limit`, one slot per GPU) across processes and machines."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from gcmodels.config import RuntimeConfig

__all__ = ["GPULimitMissing", "gpu_slot"]

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class GPULimitMissing(RuntimeError):
    """`runtime.gpu_limit_strict` is set and the named concurrency limit does not exist."""


def _device_lock(device: torch.device) -> threading.Lock:
    index = (
        device.index if device.index is not None else torch.cuda.current_device() if torch.cuda.is_available() else 0
    )
    with _locks_guard:
        return _locks.setdefault(f"cuda:{index}", threading.Lock())


@contextmanager
def gpu_slot(device: torch.device, runtime: RuntimeConfig) -> Iterator[None]:
    """Hold `device` for the block. On a CPU device nothing is taken. On a CUDA device: first the
    process-local lock of that card (threads of one worker never share it), then one slot of the
    Prefect concurrency limit `runtime.gpu_limit` (workers in other processes or on other hosts
    wait for a free slot; create the limit with one slot per GPU). When the limit does not exist
    on the server, Prefect logs a warning and the stage runs without it; with
    `runtime.gpu_limit_strict` the stage fails with `GPULimitMissing`."""
    if device.type != "cuda":
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(_device_lock(device))
        if runtime.gpu_limit is not None:
            from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
            from prefect.concurrency.sync import concurrency

            try:
                stack.enter_context(concurrency(runtime.gpu_limit, occupy=1, strict=runtime.gpu_limit_strict))
            except ConcurrencySlotAcquisitionError as err:
                if "must be created" not in str(err):
                    raise
                raise GPULimitMissing(
                    f"runtime.gpu_limit={runtime.gpu_limit!r} names no Prefect concurrency limit on the server; "
                    f"create it with `prefect gcl create {runtime.gpu_limit} --limit <number of GPUs>`, "
                    "or set runtime.gpu_limit_strict=false to run without it"
                ) from None
        yield
