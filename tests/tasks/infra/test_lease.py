"""The run-root lease (tasks/infra/lease.py): one holder at a time, on a local disk and on S3 (moto's
server); a second run refuses naming the holder, or waits; a dead holder's lease expires and is
taken over; a lease taken over from a live holder is noticed; the in-progress marker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

import gcmine.tasks.infra.lease as lease_module
from gcmine.tasks.infra.errors import RunRootBusy, StorageError
from gcmine.tasks.infra.lease import IN_PROGRESS, LEASE, RunLease, root_state, run_lease
from gcmine.tasks.infra.storage import RunStore

KEY, SECRET = "AKIAGCMINELEASE00001", "gcmine-lease-secret-Zq8f3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "key": KEY, "secret": SECRET}
    s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir("leases")
    yield opts
    server.stop()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setattr(lease_module, "SETTLE_SECONDS", 0.2)
    if request.param == "local":
        return RunStore(str(tmp_path / "out"))
    opts = request.getfixturevalue("s3")
    return RunStore(f"s3://leases/{request.node.name.replace('[', '-').rstrip(']')}-{time.monotonic_ns()}", opts)


def test_a_second_run_is_refused_with_one_line_naming_the_holder(root) -> None:
    first = RunLease(root, flow_run_id="run-A", expiry=30)
    first.acquire()
    try:
        with pytest.raises(RunRootBusy) as err:
            RunLease(root, flow_run_id="run-B", expiry=30).acquire()
        msg = str(err.value)
        assert "\n" not in msg and "flow run run-A" in msg and f"pid {first.owner['pid']}" in msg
        assert "storage.lease=refuse" in msg and root.location in msg
    finally:
        first.release()
    assert not root.exists(LEASE)
    second = RunLease(root, flow_run_id="run-B", expiry=30)
    second.acquire()  # free again
    second.release()


def test_a_waiting_run_gets_the_lease_when_the_holder_releases_it(root) -> None:
    first = RunLease(root, flow_run_id="run-A", expiry=30)
    first.acquire()
    threading.Timer(1.0, first.release).start()
    start = time.monotonic()
    second = RunLease(root, flow_run_id="run-B", expiry=30, wait=20, poll=0.1)
    second.acquire()
    assert 0.9 < time.monotonic() - start < 15
    assert json.loads(root.read_bytes(LEASE))["flow_run_id"] == "run-B"
    second.release()


def test_waiting_gives_up_after_the_wait(root) -> None:
    first = RunLease(root, flow_run_id="run-A", expiry=30)
    first.acquire()
    try:
        start = time.monotonic()
        with pytest.raises(RunRootBusy, match=r"flow run run-A .*waited \d+ s \(storage.lease_wait\)"):
            RunLease(root, flow_run_id="run-B", expiry=30, wait=0.5, poll=0.1).acquire()
        assert time.monotonic() - start < 10
    finally:
        first.release()


def test_the_lease_of_a_crashed_run_expires_and_is_taken_over(root, caplog) -> None:
    dead = {
        "host": "gone",
        "pid": 1,
        "flow_run_id": "crashed",
        "started": "2020-01-01T00:00:00+00:00",
        "token": "x",
        "renewed": time.time() - 100,
        "expiry": 30,
    }
    root.write_json(LEASE, dead)
    lease = RunLease(root, flow_run_id="run-B", expiry=30)
    with caplog.at_level("WARNING", logger="gcmine.lease"):
        lease.acquire()
    assert "taking over the lease" in caplog.text and "flow run crashed" in caplog.text
    assert json.loads(root.read_bytes(LEASE))["token"] == lease.owner["token"]
    lease.release()


def test_the_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(root) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root.write_json(
        LEASE,
        {
            "host": socket.gethostname(),
            "pid": gone.pid,
            "flow_run_id": "killed",
            "started": "x",
            "token": "x",
            "renewed": time.time(),
            "expiry": 600,
        },
    )
    lease = RunLease(root, flow_run_id="run-B", expiry=30)  # refuses a live holder...
    lease.acquire()  # ...but this one's process is gone: no waiting for its expiry
    assert json.loads(root.read_bytes(LEASE))["token"] == lease.owner["token"]
    lease.release()


def test_the_holder_renews_its_lease_so_it_never_expires(root) -> None:
    holder = RunLease(root, flow_run_id="run-A", expiry=1.0)  # renewed every 0.25 s
    holder.acquire()
    try:
        first = json.loads(root.read_bytes(LEASE))["renewed"]
        time.sleep(2.0)  # twice the expiry
        assert json.loads(root.read_bytes(LEASE))["renewed"] > first
        with pytest.raises(RunRootBusy):
            RunLease(root, flow_run_id="run-B", expiry=1.0).acquire()
    finally:
        holder.release()
    assert holder.lost is None


def test_runs_starting_together_get_the_lease_one_at_a_time(root) -> None:
    """Eight runs start at once, each refusing if the root is taken: exactly one gets it."""
    barrier = threading.Barrier(8)
    won, refused = [], []

    def start(i: int) -> None:
        lease = RunLease(root, flow_run_id=f"run-{i}", expiry=30)
        barrier.wait()
        try:
            lease.acquire()
            won.append(lease)
        except RunRootBusy:
            refused.append(i)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert json.loads(root.read_bytes(LEASE))["token"] == won[0].owner["token"]
    won[0].release()


def test_a_lease_taken_over_from_a_live_holder_fails_its_run(root) -> None:
    """A holder cut off for longer than the expiry (here: its lease overwritten) notices at its
    next renewal and its run fails at the end instead of reporting success."""
    with pytest.raises(RunRootBusy, match=r"lost the lease .* to flow run intruder"):
        with run_lease(root, flow_run_id="run-A", mode="refuse", expiry=0.8):
            intruder = {
                "host": "h2",
                "pid": 2,
                "flow_run_id": "intruder",
                "started": "now",
                "token": "t2",
                "renewed": time.time() + 60,
                "expiry": 30,
            }
            root.write_json(LEASE, intruder)
            time.sleep(1.0)  # past a renewal (every 0.2 s)
    assert json.loads(root.read_bytes(LEASE))["token"] == "t2"  # the intruder's lease is left alone
    assert root.exists(IN_PROGRESS)  # the root is not marked finished


def test_in_progress_marker_and_root_state(root) -> None:
    assert root_state(root) == {"state": "idle"}
    with run_lease(root, flow_run_id="run-A", mode="refuse", expiry=30):
        state = root_state(root)
        assert state["state"] == "updating" and "flow run run-A" in state["by"]
        assert json.loads(root.read_bytes(IN_PROGRESS))["flow_run_id"] == "run-A"
    assert root_state(root) == {"state": "idle"} and not root.exists(LEASE)
    with pytest.raises(RuntimeError, match="stage failed"):
        with run_lease(root, flow_run_id="run-B", mode="refuse", expiry=30):
            raise RuntimeError("stage failed")
    state = root_state(root)  # the update did not finish: readers are told so
    assert state["state"] == "interrupted" and "flow run run-B" in state["by"] and not root.exists(LEASE)
    with run_lease(root, flow_run_id="run-C", mode="refuse", expiry=30):
        pass
    assert root_state(root) == {"state": "idle"}


def test_a_run_failing_on_storage_leaves_its_lease_to_expire(root) -> None:
    """Deleting the lease through a store that just failed would only delay the error: it is
    left to expire (its renewals stop at once)."""
    start = time.monotonic()
    with pytest.raises(StorageError, match="stalled"):
        with run_lease(root, flow_run_id="run-A", mode="refuse", expiry=30) as lease:
            raise StorageError(0, "writing s3://b/x failed: stalled")
    assert time.monotonic() - start < 5 and not lease._thread.is_alive()
    assert json.loads(root.read_bytes(LEASE))["token"] == lease.owner["token"]
    assert root_state(root)["state"] == "updating"  # until it expires (this process is alive)
