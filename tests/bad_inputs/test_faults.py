"""Injected faults: object-store errors (moto's S3 server, wrapped to fail), a full disk, a
simulated GPU out-of-memory error, a diverging loss; each ends in a clear message, retried when
transient, with nothing partial left visible."""

from __future__ import annotations

import io
import os
import socket
import time

import pandas as pd
import pytest
import torch
from PIL import Image

from gcmine.flows.cli import main
from gcmine.tasks.infra import storage
from gcmine.tasks.infra.artifacts import MANIFEST, MODEL, TRAINING
from gcmine.tasks.infra.errors import OutOfMemory, StorageAccessError, StorageError
from gcmine.tasks.infra.models import COMPLETE
from gcmine.tasks.infra.storage import RunStore, open_fs
from gcmine.tasks.ingest import ingest_images
from gcmodels.config import DataConfig, ModelConfig, RuntimeConfig, ScoreConfig, TrainConfig
from gcmodels.diffusion.training import TrainingDiverged

KEY, SECRET = "AKIAGCMINEFAULTS0001", "gcmine-fault-secret-8Hq2"


def _png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto(bucket: str):
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": KEY, "secret": SECRET}
    import s3fs

    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.mkdir(bucket)
    return server, opts


@pytest.fixture(scope="module")
def s3():
    server, opts = _moto("faults")
    yield opts
    server.stop()


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backoff waits, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", seen.append)
    return seen


class Flaky:
    """Wraps a filesystem method: the first `failures` calls raise `error`, later ones go through."""

    def __init__(self, method, failures: int, error: Exception) -> None:
        self.method, self.failures, self.error, self.calls = method, failures, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.method(*args, **kwargs)


# ------------------------------------------------------------------ S3
def test_s3_transient_write_errors_are_retried_with_backoff(s3, waits, monkeypatch) -> None:
    store = RunStore("s3://faults/run1", s3)
    flaky = Flaky(store.fs.pipe_file, 3, ConnectionError("connection reset by peer"))
    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    store.write_parquet("t.parquet", pd.DataFrame({"a": [1, 2]}))
    assert flaky.calls == 4 and waits == [0.5, 1.0, 2.0]
    monkeypatch.undo()
    assert list(RunStore("s3://faults/run1", s3).read_parquet("t.parquet")["a"]) == [1, 2]


def test_s3_persistent_failure_is_clear_and_leaves_the_old_object(s3, waits, monkeypatch) -> None:
    store = RunStore("s3://faults/run2", s3)
    store.write_parquet("t.parquet", pd.DataFrame({"a": [1]}))
    flaky = Flaky(store.fs.pipe_file, 99, TimeoutError("read timeout"))
    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    with pytest.raises(StorageError) as err:
        store.write_parquet("t.parquet", pd.DataFrame({"a": [2, 3]}))
    msg = str(err.value)
    assert "writing s3://faults/run2/t.parquet failed after 5 attempt(s)" in msg and "read timeout" in msg
    assert flaky.calls == 5 and waits == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(StorageError):
        store.write_bytes("new.bin", b"x")
    monkeypatch.undo()
    fresh = RunStore("s3://faults/run2", s3)
    assert list(fresh.read_parquet("t.parquet")["a"]) == [1] and not fresh.exists("new.bin")


def test_s3_permanent_errors_are_not_retried(s3, waits, monkeypatch) -> None:
    store = RunStore("s3://faults/run3", s3)
    flaky = Flaky(store.fs.pipe_file, 99, PermissionError("Access Denied"))
    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    with pytest.raises(StorageAccessError) as err:  # one line: the URI and what to check
        store.write_bytes("x.bin", b"x")
    assert str(err.value).startswith(
        "writing s3://faults/run3/x.bin: access denied (Access Denied); check the credentials"
    )
    assert flaky.calls == 1 and waits == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("never-written.bin")


def test_s3_reads_are_retried(s3, waits, monkeypatch) -> None:
    store = RunStore("s3://faults/run4", s3)
    store.write_parquet("t.parquet", pd.DataFrame({"a": [5]}))
    flaky = Flaky(store.fs.cat_file, 1, OSError("503 Slow Down"))
    monkeypatch.setattr(store.fs, "cat_file", flaky)
    assert list(store.read_parquet("t.parquet")["a"]) == [5] and flaky.calls == 2 and waits == [0.5]


def test_s3_image_read_errors_retry_then_fail_the_run_not_drop_images(s3, waits, monkeypatch) -> None:
    fs, _ = open_fs("s3://faults/imgs", s3)
    for i in range(3):
        fs.pipe_file(f"faults/imgs/lab/{i}.png", _png(i))
    flaky = Flaky(fs.cat_file, 2, ConnectionError("connection reset"))
    monkeypatch.setattr(fs, "cat_file", flaky)
    summary = ingest_images("s3://faults/imgs", None, RunStore("s3://faults/run5", s3), DataConfig(resolution=16), s3)
    assert summary["ok"] == 3 and summary["rejected"] == 0 and len(waits) == 2
    flaky.failures = 10**6
    with pytest.raises(StorageError, match=r"reading s3://faults/imgs/lab/\d\.png failed after 5 attempt"):
        ingest_images("s3://faults/imgs", None, RunStore("s3://faults/run6", s3), DataConfig(resolution=16), s3)
    monkeypatch.undo()
    assert not RunStore("s3://faults/run6", s3).exists(MANIFEST)  # nothing half-written


def test_s3_server_gone_mid_run_fails_clearly(monkeypatch) -> None:
    server, opts = _moto("gone")
    opts = {**opts, "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}
    monkeypatch.setattr(storage, "BACKOFF_SECONDS", 0.01)
    store = RunStore("s3://gone/run", opts)
    store.write_bytes("a.bin", b"a")
    server.stop()
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"writing s3://gone/run/b.bin failed after 5 attempt"):
        store.write_bytes("b.bin", b"b")
    assert time.monotonic() - start < 120


# ------------------------------------------------------------------ disk full
def test_disk_full_names_the_artifact_and_keeps_the_previous_manifest(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "imgs" / "lab"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(_png(i))
    store = RunStore(str(tmp_path / "out"))
    ingest_images(str(tmp_path / "imgs"), None, store, DataConfig(resolution=16))
    before = (tmp_path / "out" / MANIFEST).read_bytes()
    (folder / "2.png").write_bytes(_png(2))

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as err:
        ingest_images(str(tmp_path / "imgs"), None, store, DataConfig(resolution=16))
    assert err.value.errno == 28 and "No space left on device" in str(err.value)
    assert "file://" in str(err.value) and "previous version" in str(err.value)
    monkeypatch.undo()
    assert (tmp_path / "out" / MANIFEST).read_bytes() == before
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


# ------------------------------------------------------------------ out of memory, NaN
@pytest.fixture
def trained(prefect_harness, tmp_path):
    """Images ingested for a tiny model (the harness: task code reports progress to a Prefect API)."""
    from gcmine.tasks.finetune import finetune

    folder = tmp_path / "imgs"
    for i in range(4):
        (folder / f"l{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"l{i % 2}" / f"{i}.png").write_bytes(_png(i))
    out = str(tmp_path / "out")
    summary = ingest_images(str(folder), None, RunStore(out), DataConfig(resolution=16))
    shards = [s["name"] for s in summary["shards"]]
    args = dict(
        out=out,
        shards=shards,
        resolution=16,
        model_config=ModelConfig(block_out_channels=(8, 16)),
        train_config=TrainConfig(steps=2, batch_size=4, warmup_steps=1),
        runtime=RuntimeConfig(device="cpu", progress=False, threads=1),
    )
    return {"out": out, "shards": summary["shards"], "finetune": finetune, "args": args}


def _oom(*a, **k):
    raise torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"
    )


def test_gpu_oom_in_training_names_the_setting(trained, monkeypatch) -> None:
    import gcmine.tasks.finetune

    monkeypatch.setattr(gcmine.tasks.finetune, "train_diffusion", _oom)
    with pytest.raises(OutOfMemory) as err:
        trained["finetune"].fn(**trained["args"])
    msg = str(err.value)
    assert msg.startswith("finetune ran out of memory on cpu") and "train.batch_size (now 4)" in msg
    assert "CUDA out of memory" in msg and not RunStore(trained["out"]).exists(f"{MODEL}/{COMPLETE}")


def test_gpu_oom_in_scoring_names_the_setting(trained, monkeypatch) -> None:
    from gcmine.tasks.score import score_shard
    from gcmodels.mining.typicality import TypicalityEstimator

    done = trained["finetune"].fn(**trained["args"])
    monkeypatch.setattr(TypicalityEstimator, "_maps_under", _oom)  # every scoring path (contrast or not) runs it
    with pytest.raises(OutOfMemory) as err:
        score_shard.fn(
            trained["out"],
            trained["shards"][0],
            done["fingerprint"],
            ScoreConfig(draws=2, batch_size=8),
            trained["args"]["runtime"],
        )
    assert "score part-00000.parquet ran out of memory" in str(err.value) and "score.batch_size (now 8)" in str(
        err.value
    )


def test_nan_loss_keeps_the_last_good_checkpoint(trained, monkeypatch) -> None:
    import gcmine.tasks.finetune

    def diverge(model, images, cond, *, callback, **kw):
        for step in range(3):
            callback({"step": step, "loss": 0.5, "lr": 1e-3, "seconds": 0.1})
        raise TrainingDiverged(3, float("nan"), 2)

    monkeypatch.setattr(gcmine.tasks.finetune, "train_diffusion", diverge)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3.*checkpoint \(step 2\)"):
        trained["finetune"].fn(**trained["args"])
    store = RunStore(trained["out"])
    assert store.exists(f"{MODEL}/{COMPLETE}")  # the restored model is published whole
    assert list(store.read_parquet(TRAINING)["step"]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (
            OutOfMemory("score part-00000.parquet ran out of memory on cuda: lower score.batch_size (now 128)"),
            "lower score.batch_size",
        ),
        (StorageError(0, "writing s3://b/run/manifest.parquet failed after 5 attempt(s)"), "after 5 attempt(s)"),
        (TrainingDiverged(7, float("inf"), 5), "Lower train.lr"),
    ],
)
def test_cli_prints_faults_without_a_traceback(tmp_path, capsys, monkeypatch, error, needle) -> None:
    import gcmine.flows.pipeline

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(gcmine.flows.pipeline, "run_pipeline", fail)
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gcmine: ") and needle in err and "Traceback" not in err


def test_model_folder_upload_retries_each_file_and_marker_comes_last(s3, waits, monkeypatch, tmp_path) -> None:
    src = tmp_path / "m"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "w.bin").write_bytes(b"weights")
    (src / COMPLETE).write_text("{}")
    store = RunStore("s3://faults/run7", s3)
    order: list[str] = []
    real = store.fs.put_file

    def put(local, remote, *a, **k):
        order.append(remote.rsplit("/", 1)[-1])
        if len(order) == 1:
            raise ConnectionError("connection reset")
        return real(local, remote, *a, **k)

    monkeypatch.setattr(store.fs, "put_file", put)
    store.put_dir(src, MODEL)
    assert order == ["w.bin", "w.bin", COMPLETE] and waits == [0.5]
    monkeypatch.undo()
    assert RunStore("s3://faults/run7", s3).read_bytes(f"{MODEL}/unet/w.bin") == b"weights"


def test_out_of_memory_hint_translates_only_out_of_memory() -> None:
    from gcmine.tasks.infra.errors import out_of_memory_hint

    with pytest.raises(OutOfMemory, match=r"score ran out of memory on cuda:0: lower score.batch_size \(now 64\)"):
        with out_of_memory_hint("score", {"score.batch_size": 64}, "cuda:0"):
            raise RuntimeError("CUDA error: out of memory")
    with pytest.raises(ValueError, match="shape mismatch"):
        with out_of_memory_hint("score", {"score.batch_size": 64}):
            raise ValueError("shape mismatch")
