"""The task runner a run's settings ask for: threads on this machine (`runtime.workers`: auto = 2
on CUDA, so that a shard's I/O overlaps another's compute, 1 on a CPU), a Dask
cluster (`runtime.runner=dask`), or one Dask worker process per GPU of this node (`runtime.gpus`).

Tasks receive URIs and fingerprints only; each worker loads the model from the run root itself
(tasks/infra/models.py), once per process, on the device `runtime.device` resolves to there. A
GPU worker sees only its own card (CUDA_VISIBLE_DEVICES), so `auto` / `cuda` is that card, and
every GPU stage still takes a slot of the Prefect concurrency limit `runtime.gpu_limit`
(tasks/infra/gpu.py): create it with one slot per GPU, or the workers take turns.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from gcmine.tasks.infra.artifacts import GPU_ENV
from gcmodels.config import ConfigError, RuntimeConfig
from gcmodels.runtime import check_device, data_parallel_devices, gpu_indices, task_threads

__all__ = ["gpu_cluster", "gpu_workers", "in_process_runtime", "task_runner", "training_cards"]


def task_runner(runtime: RuntimeConfig):
    """The runner of `runtime`; with `runtime.gpus`, a local cluster of one worker per GPU (its
    indices checked against this machine now: a ConfigError before the run starts)."""
    if runtime.gpus is not None:
        return _dask_runner(
            cluster_class=gpu_cluster, cluster_kwargs={"gpus": gpu_workers(runtime), "threads": task_threads(runtime)}
        )
    if runtime.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=task_threads(runtime))
    if runtime.dask_address:
        return _dask_runner(address=runtime.dask_address)
    return _dask_runner(
        cluster_kwargs={
            "n_workers": runtime.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def gpu_workers(runtime: RuntimeConfig) -> list[int]:
    """The CUDA indices of this node that `runtime.gpus` names (one worker each)."""
    assert runtime.gpus is not None
    return gpu_indices(runtime.gpus, cuda_device_count())


def in_process_runtime(runtime: RuntimeConfig) -> RuntimeConfig:
    """The runtime of the GPU stages that run in the flow's own process (fine-tuning, samples,
    translation): with `runtime.gpus` on a CUDA machine, the first card it lists (the flow's
    process sees every card, where `auto` would be cuda:0); otherwise `runtime` itself."""
    import torch

    if runtime.gpus is None or not torch.cuda.is_available():
        return runtime
    return runtime.model_copy(update={"device": f"cuda:{gpu_workers(runtime)[0]}", "gpus": None})


def training_cards(runtime: RuntimeConfig, processes: int) -> list:
    """The devices of fine-tuning's `processes` data-parallel processes (`train.processes`),
    checked before any work: consecutive cards from the in-process device (`runtime.device`, or the
    first card of `runtime.gpus`), which must exist and, with `runtime.gpus`, be cards it lists."""
    local = in_process_runtime(runtime)
    devices = data_parallel_devices(processes, check_device(local))
    if runtime.gpus is not None and devices[0].type == "cuda":
        listed = gpu_workers(runtime)
        outside = [d.index for d in devices if d.index not in listed]
        if outside:
            raise ConfigError(
                f"train.processes={processes} fine-tunes on consecutive cards from cuda:{devices[0].index}, but "
                f"runtime.gpus lists {listed} (not {outside}): list consecutive cards first, or lower train.processes"
            )
    return devices


def cuda_device_count() -> int:
    """CUDA devices this process sees."""
    import torch

    return torch.cuda.device_count()


def gpu_cluster(gpus: list[int], threads: int = 1, **kwargs: Any):
    """A local Dask cluster with one worker process per CUDA index in `gpus`, each started with
    CUDA_VISIBLE_DEVICES set to its own index (the way dask-cuda pins its workers; the variable is
    read when CUDA starts in the worker, after the process began) and GCMINE_GPU naming it for the
    run's ledger, with `threads` task threads (`task_threads`: auto = 2 on CUDA, so that one
    shard's reading and writing overlap another's compute on the card, which computes one at a time)."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{index}": {
            "cls": Nanny,
            "options": {"nthreads": threads, "env": {"CUDA_VISIBLE_DEVICES": str(index), GPU_ENV: str(index)}},
        }
        for index in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="gcmine-gpus", **kwargs)


def _dask_runner(**kwargs: Any):
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "runtime.runner='dask' and runtime.gpus need prefect-dask, which is not installed: "
            "pip install 'gcmine[dask]'"
        ) from None
    return DaskTaskRunner(**kwargs)
