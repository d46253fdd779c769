"""The card waits on neither Parquet nor S3 (issue 20): with two task-runner threads - the default
on CUDA, `runtime.workers=auto` - one shard is read and the previous one written while another
computes; the card still computes one shard at a time, holds at most one shard read ahead, and
the outputs are those of the serial run, byte for byte."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import DataConfig, ModelConfig, RuntimeConfig, Settings, TrainConfig
from gcmodels.runtime import task_threads

WAIT = 30.0  # seconds an expected event may take on a loaded machine (a missing one fails the test)


def test_workers_auto_is_two_on_cuda_one_on_cpu(monkeypatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    from gcmine.flows.pipeline import task_runner

    assert RuntimeConfig().workers == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert task_threads(RuntimeConfig()) == 1  # on the CPU the compute takes the cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert task_threads(RuntimeConfig()) == 2  # device auto -> cuda: I/O beside the compute
    assert task_threads(RuntimeConfig(device="cpu")) == 1
    assert task_threads(RuntimeConfig(workers=3)) == task_threads(RuntimeConfig(device="cpu", workers=3)) == 3
    runner = task_runner(RuntimeConfig())
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 2
    settings = Settings.from_dict({"runtime": {"workers": "2"}})
    assert settings.runtime.workers == 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """A run root of 12 images (16 px, 2 labels) in 3 shards of 4, with a model trained 2 steps."""
    from gcmine.tasks.finetune import finetune
    from gcmine.tasks.ingest import ingest

    work = tmp_path_factory.mktemp("io-overlap")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = work / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    base = work / "base"
    ingested = ingest.fn(str(work / "images"), None, str(base), DataConfig(resolution=16, shard_size=4))
    shards = ingested["shards"]
    assert len(shards) == 3
    trained = finetune.fn(
        str(base),
        [s["name"] for s in shards],
        16,
        ModelConfig(block_out_channels=(8, 16)),
        TrainConfig(steps=2, batch_size=4, warmup_steps=0),
        RuntimeConfig(device="cpu", threads=1, progress=False),
    )
    return {"work": work, "base": base, "shards": shards, "fingerprint": trained["fingerprint"]}


def _score_stage(prepared: dict, name: str, workers: int) -> dict[str, str]:
    """The score stage as the flow maps it (tasks/flows/pipeline.py `_map_score`, under the flow's
    task runner with `workers` threads) on a fresh copy of the prepared run root: the SHA-256 of
    each Parquet output (maps/, scores/)."""
    from prefect import flow

    from gcmine.flows.pipeline import _map_score, task_runner

    out = prepared["work"] / name
    shutil.copytree(prepared["base"], out)
    settings = Settings.from_dict(
        {
            "data": {"resolution": 16, "shard_size": 4},
            "score": {"draws": 2, "batch_size": 8},
            "runtime": {"device": "cpu", "threads": 1, "progress": False, "workers": workers, "gpu_limit": None},
        }
    )

    @flow(name="score-stage", validate_parameters=False)
    def stage() -> list:
        items = [(s, None) for s in prepared["shards"]]
        return _map_score(str(out), items, prepared["fingerprint"], None, settings, None, settings.score)

    stage.with_options(task_runner=task_runner(settings.runtime))()
    store = RunStore(str(out))
    return {
        f"{folder}/{part}": hashlib.sha256(store.read_bytes(f"{folder}/{part}")).hexdigest()
        for folder in ("maps", "scores")
        for part in store.list_files(folder)
    }


def test_next_shard_is_read_and_previous_written_while_a_shard_computes(prefect_harness, prepared, monkeypatch) -> None:
    import gcmine.tasks.score as score

    serial = _score_stage(prepared, "serial", workers=1)  # the reference: one shard after the other

    card = threading.Lock()  # a simulated GPU: the real rule of gpu_slot on CUDA, one compute at a time
    guard = threading.Lock()
    local = threading.local()
    order: list[str] = []  # shards in the order they got the card
    started = {k: threading.Event() for k in range(3)}  # the k-th compute has the card
    reads: list[tuple[str, float]] = []
    read_event = threading.Condition(guard)
    holders, peak, in_flight, peak_flight, released = [0], [0], set(), [0], set()
    missed: list[str] = []

    @contextmanager
    def slot(device, runtime):
        with card:
            with guard:
                holders[0] += 1
                peak[0] = max(peak[0], holders[0])
                k = len(order)
                order.append(local.shard)
                unread = {s["name"] for s in prepared["shards"]} - {name for name, _ in reads}
            started[k].set()
            if k >= 1 and unread:  # this compute lasts until the next shard is read beside it
                with read_event:
                    if not read_event.wait_for(lambda: any(name in unread for name, _ in reads), WAIT):
                        missed.append(f"no shard was read while shard #{k} ({local.shard}) computed")
            try:
                yield
            finally:
                with guard:
                    holders[0] -= 1
                    in_flight.discard(local.shard)
                    released.add(local.shard)

    real_read_parts, real_write = RunStore.read_parts, RunStore.write_parquet

    def read_parts(self, folder, names, columns=None):
        if folder == "images":
            local.shard = names[0]
            with read_event:
                reads.append((names[0], time.perf_counter()))
                in_flight.add(names[0])
                peak_flight[0] = max(peak_flight[0], len(in_flight))
                read_event.notify_all()
        return real_read_parts(self, folder, names, columns)

    def write_parquet(self, rel, df, **options):
        if rel.startswith("maps/"):
            k = order.index(local.shard)
            if k + 1 < len(started) and not started[k + 1].wait(WAIT):  # written while the next one computes
                missed.append(f"shard #{k} ({local.shard}) was written while no other shard computed")
        return real_write(self, rel, df, **options)

    monkeypatch.setattr(score, "gpu_slot", slot)
    monkeypatch.setattr(RunStore, "read_parts", read_parts)
    monkeypatch.setattr(RunStore, "write_parquet", write_parquet)
    overlapped = _score_stage(prepared, "overlapped", workers=2)

    assert not missed, missed
    assert len(order) == 3 and peak[0] == 1  # every shard computed, never two at once on the card
    assert peak_flight[0] == 2  # the shard computing and at most one read ahead
    assert len(serial) == 6 and overlapped == serial  # every Parquet output identical, byte for byte
