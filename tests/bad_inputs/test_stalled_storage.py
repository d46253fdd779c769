"""A stalled object store (a moto server stopped with SIGSTOP: connections are accepted by the
kernel, nothing ever answers) ends in a clear `gcmine:` error naming the URI within the storage
deadline, not in a hang; wrong credentials and a missing bucket are one line saying what to
check; a run on S3 leaves no copy in the system temp folder (issue 22)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from gcmine.flows.cli import main
from gcmine.tasks.infra.errors import StorageAccessError, StorageError
from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import StorageConfig

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")]

KEY, SECRET = "AKIAGCMINESTALL00001", "gcmine-stall-secret-Zq8f3"
FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "retries": 2, "deadline": 4.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_process(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture
def stalled():
    """A moto server with a bucket and one object, then stopped (SIGSTOP); resumed and ended after the test."""
    proc, endpoint = _moto_process()
    config = StorageConfig(endpoint_url=endpoint, key=KEY, secret=SECRET, **FAST)
    store = RunStore("s3://stall/run", config.store_options())
    store.fs.mkdir("stall")
    store.write_bytes("a.bin", b"a")
    os.kill(proc.pid, signal.SIGSTOP)
    yield {"store": store, "config": config, "endpoint": endpoint}
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("operation", "needle", "limit"),
    [
        # no attempt starts after the deadline (4 s); each attempt ends by the read timeout (1 s)
        (lambda s: s.read_bytes("a.bin"), "reading s3://stall/run/a.bin failed after", 4.0 + 1.0),
        (lambda s: s.exists("a.bin"), "checking s3://stall/run/a.bin failed after", 4.0 + 1.0),
        # a PUT waits for "100 Continue", which no read timeout bounds: cut at the deadline itself
        (lambda s: s.write_bytes("b.bin", b"b" * 1000), "writing s3://stall/run/b.bin failed after", 4.0),
    ],
    ids=["read", "check", "write"],
)
def test_a_stalled_endpoint_fails_within_the_deadline_naming_the_uri(stalled, operation, needle, limit) -> None:
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        operation(stalled["store"])
    took = time.monotonic() - start
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert took < limit + 3.0, f"took {took:.1f} s"  # slack for a loaded machine


def test_a_run_into_a_stalled_root_ends_with_a_gcmine_line(prefect_harness, stalled, tmp_path, capsys) -> None:
    images = tmp_path / "imgs" / "lab"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(images / f"{i}.png")
    argv = [
        "run",
        str(tmp_path / "imgs"),
        "--out",
        "s3://stall/run2",
        "--set",
        "runtime.progress=false",
        "--set",
        f"storage.endpoint_url={stalled['endpoint']}",
        "--set",
        f"storage.key={KEY}",
        "--set",
        f"storage.secret={SECRET}",
    ]
    for name, value in FAST.items():
        argv += ["--set", f"storage.{name}={value}"]
    start = time.monotonic()
    assert main(argv) == 1
    took = time.monotonic() - start
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gcmine: ")]
    assert len(lines) == 1 and "s3://stall/run2/_lease.json failed after" in lines[0], lines
    assert SECRET not in lines[0]
    print(f"time to a clear error with a stalled endpoint (flow start included): {took:.1f} s")


def test_wrong_credentials_and_a_missing_bucket_are_one_line_saying_what_to_check(
    prefect_harness, tmp_path, capsys
) -> None:
    proc, endpoint = _moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # moto checks credentials
    try:
        wrong = StorageConfig(endpoint_url=endpoint, key="AKIAWRONGKEY00000000", secret=SECRET, **FAST)
        with pytest.raises(StorageAccessError) as err:
            RunStore("s3://any/run", wrong.store_options()).write_bytes("x.bin", b"x")
        msg = str(err.value)
        assert msg.startswith("writing s3://any/run/x.bin: access denied") and "check the credentials" in msg
        assert SECRET not in msg and "\n" not in msg
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, endpoint = _moto_process()
    try:
        images = tmp_path / "imgs" / "lab"
        images.mkdir(parents=True)
        Image.new("RGB", (16, 16), (1, 2, 3)).save(images / "0.png")
        argv = [
            "run",
            str(tmp_path / "imgs"),
            "--out",
            "s3://no-such-bucket/run",
            "--set",
            "runtime.progress=false",
            "--set",
            f"storage.endpoint_url={endpoint}",
            "--set",
            f"storage.key={KEY}",
            "--set",
            f"storage.secret={SECRET}",
        ]
        assert main(argv) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gcmine: ")]
        assert len(lines) == 1 and "s3://no-such-bucket/run/_lease.json" in lines[0], lines
        assert "the bucket does not exist" in lines[0] and "storage.endpoint_url" in lines[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
