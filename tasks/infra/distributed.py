"""Data-parallel process groups (`train.processes`): this process is rank 0 and keeps doing what it
does (logging, progress, checkpoints, publishing); ranks 1 .. P-1 are spawned processes that run a
given function. torch.distributed rendezvous through a TCP store on 127.0.0.1 on a port the
operating system picks (no port race); gloo on CPUs, nccl with one CUDA device per process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

__all__ = ["RankFailed", "process_group"]

# Collectives wait this long for the slowest process: rank 0 writing a multi-GB checkpoint to S3
# while the others wait in the next step's gradient sum must not time out.
TIMEOUT = timedelta(minutes=30)
_READY = "gcmine/ready/"


class RankFailed(RuntimeError):
    """A spawned data-parallel process failed (its own error and traceback in the message)."""


@contextmanager
def process_group(
    devices: Sequence[torch.device], target: Callable[..., None], args: tuple = (), *, startup: float = 600.0
) -> Iterator[Any]:
    """A torch.distributed group of ``len(devices)`` processes for the block: this process is rank
    0 on ``devices[0]``; rank r >= 1 is a spawned process that runs ``target(group, devices[r],
    *args)`` (a module-level function; `args` picklable; on CUDA the rank's card is its current
    device) and leaves the group when it returns. Yields the group (None for one device: nothing
    is started). The ranks must run the same collectives as the block (e.g. the same training).

    A spawned rank that fails before joining (within `startup` seconds) or during the block is a
    `RankFailed` with its traceback; an error of the block itself is raised as it is (the other
    ranks are then stopped). The group is destroyed and every spawned process joined or ended on
    the way out."""
    if len(devices) == 1:
        yield None
        return
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised in this process")
    world = len(devices)
    backend = "nccl" if devices[0].type == "cuda" else "gloo"
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    ranks = mp.start_processes(
        _rank_main,
        args=(store.port, world, backend, [str(d) for d in devices], target, args),
        nprocs=world - 1,
        join=False,
        start_method="spawn",
    )
    try:
        _await_ranks(store, ranks, world, startup)
        if devices[0].type == "cuda":
            torch.cuda.set_device(devices[0])
        dist.init_process_group(backend, store=store, rank=0, world_size=world, timeout=TIMEOUT)
        try:
            yield dist.group.WORLD
        except BaseException as err:
            dist.destroy_process_group()  # ranks waiting in a collective get an error and exit
            failure = _failure(ranks, timeout=30.0)
            if failure is not None and _is_collective_error(err):
                raise failure from err  # rank 0 only saw a peer vanish: the rank's own error says why
            raise
        dist.destroy_process_group()
        failure = _failure(ranks, timeout=None)
        if failure is not None:
            raise failure
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        _end(ranks)


def _rank_main(
    index: int,
    port: int,
    world: int,
    backend: str,
    devices: list[str],
    target: Callable[..., None],
    args: tuple,
) -> None:
    """A spawned rank (index + 1): join the group on its device, run `target`, leave the group."""
    import torch.distributed as dist

    rank = index + 1
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=TIMEOUT)
    store.set(f"{_READY}{rank}", "1")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        target(dist.group.WORLD, device, *args)
    finally:
        dist.destroy_process_group()


def _await_ranks(store: Any, ranks: Any, world: int, startup: float) -> None:
    """Wait until every spawned rank has started (imports done, on its device) or one has failed:
    rank 0 never waits TIMEOUT in a rendezvous with a process that is gone."""
    keys = [f"{_READY}{r}" for r in range(1, world)]
    deadline = time.monotonic() + startup
    while not store.check(keys):
        failure = _failure(ranks, timeout=0.0)
        if failure is not None:
            raise failure
        if time.monotonic() > deadline:
            raise RankFailed(f"the data-parallel processes did not start within {startup:.0f} s")
        time.sleep(0.05)


def _failure(ranks: Any, timeout: float | None) -> RankFailed | None:
    """The first spawned rank's failure (waiting up to `timeout` seconds for them to end; None =
    until they all end), or None when none failed so far."""
    import torch.multiprocessing as mp

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not ranks.join(timeout=None if deadline is None else max(0.0, deadline - time.monotonic())):
            if deadline is not None and time.monotonic() >= deadline:
                return None
    except mp.ProcessRaisedException as err:
        return RankFailed(f"data-parallel process {err.error_index + 1} failed:\n{err}")
    except mp.ProcessExitedException as err:
        return RankFailed(f"data-parallel process {err.error_index + 1} exited with code {err.exit_code}: {err}")
    return None


def _is_collective_error(err: BaseException) -> bool:
    """Whether `err` is how rank 0 sees a peer that vanished (gloo or nccl reports it from a collective)."""
    return isinstance(err, torch.distributed.DistError) or (
        isinstance(err, RuntimeError) and any(w in str(err) for w in ("gloo", "Gloo", "NCCL", "Connection closed"))
    )


def _end(ranks: Any) -> None:
    """End the spawned ranks still running (after an error), and reap them."""
    for process in ranks.processes:
        if process.is_alive():
            process.terminate()
    for process in ranks.processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
