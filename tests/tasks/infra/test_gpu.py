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


def test_gpu_indices_of_the_node() -> None:
    from gcmodels.runtime import gpu_indices

    assert gpu_indices("all", 4) == [0, 1, 2, 3] and gpu_indices(2, 4) == [0, 1] and gpu_indices([3, 1], 4) == [3, 1]
    with pytest.raises(ConfigError, match=r"runtime.gpus is 'all' but this machine has 0 CUDA device\(s\)$"):
        gpu_indices("all", 0)
    with pytest.raises(ConfigError, match=r"runtime.gpus is 3 but this machine has 2 CUDA device\(s\) \(0 to 1\)"):
        gpu_indices(3, 2)
    with pytest.raises(ConfigError, match=r"runtime.gpus lists \[2\] but this machine has 2"):
        gpu_indices([0, 2], 2)


def test_runtime_gpus_settings_are_checked() -> None:
    assert Settings.from_dict({"runtime": {"gpus": [0, 2]}}).runtime.gpus == [0, 2]
    for bad, what in [
        (0, "a count >= 1"),
        ([1, 1], "distinct CUDA indices"),
        ([], "distinct CUDA indices"),
        ([-1], "distinct CUDA indices"),
    ]:
        with pytest.raises(ConfigError, match=what):
            Settings.from_dict({"runtime": {"gpus": bad}})
    with pytest.raises(ConfigError, match=r"leave runtime\.device at auto"):
        Settings.from_dict({"runtime": {"gpus": 2, "device": "cuda:1"}})
    with pytest.raises(ConfigError, match=r"runtime\.dask_address"):
        Settings.from_dict({"runtime": {"gpus": 2, "runner": "dask", "dask_address": "tcp://10.0.0.5:8786"}})


def test_task_runner_of_runtime_gpus(monkeypatch) -> None:
    """runtime.gpus: a Dask runner whose cluster is one worker per listed card, checked against
    the cards this machine has when the runner is made (before the run)."""
    from prefect_dask import DaskTaskRunner

    from gcmine.flows import runners

    monkeypatch.setattr(runners, "cuda_device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpus, indices in [("all", [0, 1, 2, 3]), (2, [0, 1]), ([3, 1], [3, 1])]:
        runner = runners.task_runner(RuntimeConfig(gpus=gpus))
        assert isinstance(runner, DaskTaskRunner) and runner.cluster_class is runners.gpu_cluster
        assert runner.cluster_kwargs == {"gpus": indices, "threads": 2}  # auto: I/O overlaps compute on each card
    assert runners.task_runner(RuntimeConfig(gpus=2, workers=3)).cluster_kwargs == {"gpus": [0, 1], "threads": 3}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # workers computing on a CPU: one thread each
    assert runners.task_runner(RuntimeConfig(gpus=2)).cluster_kwargs == {"gpus": [0, 1], "threads": 1}
    monkeypatch.setattr(runners, "cuda_device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"runtime\.gpus is 'all' but this machine has 0 CUDA"):
        runners.task_runner(RuntimeConfig(gpus="all"))


def test_gpu_cluster_pins_each_worker_to_its_own_card() -> None:
    """Each worker process of the GPU cluster starts with CUDA_VISIBLE_DEVICES (and GCMINE_GPU)
    set to its own index, one thread each, and a task there names its card (worker_name)."""
    from distributed import Client

    from gcmine.flows.runners import gpu_cluster
    from gcmine.tasks.infra.artifacts import worker_name

    def seen() -> tuple[str | None, str | None, int, str]:
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("GCMINE_GPU"), os.getpid(), worker_name()

    with gpu_cluster([1, 3]) as cluster, Client(cluster) as client:
        assert client.nthreads() and set(client.nthreads().values()) == {1}
        got = client.run(seen)
    by_card = sorted(got.values())
    assert [(v[0], v[1]) for v in by_card] == [("1", "1"), ("3", "3")]
    assert len({v[2] for v in by_card}) == 2
    assert [v[3].split(" gpu ")[1] for v in by_card] == ["1", "3"]


def test_stages_in_the_flows_process_use_the_first_listed_card(monkeypatch) -> None:
    """Fine-tuning, samples and translation run in the flow's process, which sees every card:
    with runtime.gpus they take the first card listed (not cuda:0); without CUDA, or without
    runtime.gpus, the runtime is unchanged."""
    from gcmine.flows import runners

    monkeypatch.setattr(runners, "cuda_device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    local = runners.in_process_runtime(RuntimeConfig(gpus=[2, 3], gpu_limit="cards"))
    assert (local.device, local.gpus, local.gpu_limit) == ("cuda:2", None, "cards")
    assert runners.in_process_runtime(RuntimeConfig(gpus="all")).device == "cuda:0"
    plain = RuntimeConfig(workers=2)
    assert runners.in_process_runtime(plain) is plain
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = RuntimeConfig(gpus=2)
    assert runners.in_process_runtime(cpu) is cpu


def test_training_processes_take_consecutive_cards_listed_by_runtime_gpus(monkeypatch) -> None:
    """train.processes with runtime.gpus: the fine-tuning processes take consecutive cards from
    the first card listed; a list whose first cards are not consecutive is refused before the run
    (on a CPU the processes all use the CPU)."""
    from gcmine.flows import runners

    monkeypatch.setattr(runners, "cuda_device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(runners, "check_device", lambda r: torch.device("cuda" if r.device == "auto" else r.device))
    cards = runners.training_cards(RuntimeConfig(gpus=[2, 3]), 2)
    assert cards == [torch.device("cuda", 2), torch.device("cuda", 3)]
    assert runners.training_cards(RuntimeConfig(), 2) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(ConfigError, match=r"runtime\.gpus lists \[0, 2\] \(not \[1\]\)"):
        runners.training_cards(RuntimeConfig(gpus=[0, 2]), 2)
    with pytest.raises(ConfigError, match=r"train\.processes=3 needs 3 CUDA devices"):
        runners.training_cards(RuntimeConfig(gpus=[2, 3]), 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runners, "check_device", lambda r: torch.device("cpu"))
    assert runners.training_cards(RuntimeConfig(gpus=2), 2) == [torch.device("cpu")] * 2
