"""GPU stages take a slot of the Prefect concurrency limit `runtime.gpu_limit`; CPU stages take
nothing. No GPU is needed: the slot logic only looks at the device type (a CUDA device object can
be made without a card), and the block under test does no CUDA work."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import torch

from gcmine.tasks.infra.gpu import GPULimitMissing, gpu_slot
from gcmodels.config import ConfigError, RuntimeConfig, Settings

CUDA = torch.device("cuda:0")


def _active(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


@pytest.fixture
def gpu_limit(prefect_harness):
    """A fresh one-slot limit (one GPU) on the session's server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    yield name
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def test_cpu_takes_no_slot(gpu_limit) -> None:
    with gpu_slot(torch.device("cpu"), RuntimeConfig(gpu_limit=gpu_limit, gpu_limit_strict=True)):
        assert _active(gpu_limit) == 0


def test_cuda_holds_one_slot_and_releases_it(gpu_limit) -> None:
    runtime = RuntimeConfig(gpu_limit=gpu_limit)
    with gpu_slot(CUDA, runtime):
        assert _active(gpu_limit) == 1
    assert _active(gpu_limit) == 0
    with pytest.raises(KeyError):  # released when the stage fails, too
        with gpu_slot(CUDA, runtime):
            raise KeyError("boom")
    assert _active(gpu_limit) == 0


def test_two_stages_never_share_the_card(gpu_limit) -> None:
    """Two workers (threads here; the server limit serves processes and hosts alike) asking for
    the only slot run one after the other."""
    runtime = RuntimeConfig(gpu_limit=gpu_limit)
    spans: list[tuple[float, float]] = []

    def stage() -> None:
        with gpu_slot(CUDA, runtime):
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=stage) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    (_a0, a1), (b0, _b1) = sorted(spans)
    assert a1 <= b0


def test_missing_limit_warns_or_fails(prefect_harness) -> None:
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    ran = []
    with gpu_slot(CUDA, RuntimeConfig(gpu_limit=missing)):  # default: the stage runs without it
        ran.append(True)
    assert ran
    with pytest.raises(GPULimitMissing, match=f"prefect gcl create {missing}"):
        with gpu_slot(CUDA, RuntimeConfig(gpu_limit=missing, gpu_limit_strict=True)):
            pytest.fail("ran without the required limit")
    with gpu_slot(CUDA, RuntimeConfig(gpu_limit=None)):  # no limit asked for: nothing taken
        pass


def test_runner_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"runtime.dask_address"):
        Settings.from_dict({"runtime": {"dask_address": "tcp://127.0.0.1:8786"}})
    with pytest.raises(ConfigError, match=r"runtime.runner"):
        Settings.from_dict({"runtime": {"runner": "ray"}})
    with pytest.raises(ConfigError, match="gpu_limit"):
        Settings.from_dict({"runtime": {"gpu_limit": " "}})
    s = Settings.from_dict({"runtime": {"runner": "dask", "dask_address": "tcp://127.0.0.1:8786"}})
    assert s.runtime.dask_address == "tcp://127.0.0.1:8786"


def test_task_runner_choice() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from gcmine.flows.pipeline import task_runner

    threads = task_runner(RuntimeConfig(workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = task_runner(RuntimeConfig(runner="dask", dask_workers=4))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 4 and local.cluster_kwargs["threads_per_worker"] == 1
    remote = task_runner(RuntimeConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"
