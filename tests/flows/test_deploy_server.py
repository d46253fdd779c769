"""deployments/prefect.yaml on a real Prefect server: `prefect server start` on a free port with its
own PREFECT_HOME and all its services (the scheduler included), `prefect deploy --all`, a process
worker. The production deployment is deployed with its cron replaced by an interval schedule
anchored a few seconds after the deploy: the scheduler must create that run by itself and the
worker must run it to completion (with a scheduler that fails - Prefect 3.8.8 with SQLAlchemy
2.1 - no run is ever scheduled and the test fails). Then the watch deployment, run on demand after
images were added, emits a real `gcmine.dataset.updated` event that starts the reprocess
deployment with the dataset's URI, which completes on the incremental path; `gcmine watch` then
finds nothing changed. The server's log must hold no ERROR line and no traceback.

This test uses its own server, not the session harness of tests/conftest.py. Every process it
starts runs in its own process group, killed at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"resolution": 16, "shard_size": 4},
    "embed": {"size": 8, "dim": 4},
    "cluster": {"k": 2},
    "model": {"block_out_channels": [8, 16]},
    "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "retrain_fraction": 0.5},
    "score": {"draws": 2, "batch_size": 8},
    "rank": {"per_image": 2, "elements": 2, "feature_draws": 1},
    "report": {"heatmaps_per_label": 1},
    "runtime": {"progress": False},
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The production deployment's first scheduled run: this long after the test's prefect.yaml is
# written (`prefect deploy` must be done by then; it takes 5-20 s here), then hourly.
SCHEDULE_LEAD_SECONDS = 45
SCHEDULE_INTERVAL_SECONDS = 3600
_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (\w+)\s*\|", re.MULTILINE)
# Prefect 3.8.8 on SQLite under load: a write that waits too long for the database's lock
# ("database is locked"), e.g. the worker-channel heartbeat, which reads then writes in one deferred
# transaction that SQLite refuses at once when another write committed in between, or a service
# loop on a machine so loaded that a lock is held past the 60 s busy timeout. The server logs it,
# the worker reconnects, the service runs again at its next loop. Contention of Prefect with
# SQLite (PostgreSQL has no such failure), not an error of this setup.
_SQLITE_CONTENTION = "sqlite3.OperationalError: database is locked"


def server_log_problems(text: str) -> list[str]:
    """The records of a Prefect server log at ERROR/CRITICAL level or holding a traceback (a
    record runs from its `HH:MM:SS.mmm | LEVEL |` line to the next one), except the known SQLite
    contention above; the first line of each."""
    starts = [m.start() for m in _RECORD.finditer(text)]
    records = [text[a:b] for a, b in zip([0, *starts], [*starts, len(text)])]
    problems = []
    for record in records:
        level = _RECORD.match(record)
        bad = (
            level is not None and level.group(1) in ("ERROR", "CRITICAL")
        ) or "Traceback (most recent call last)" in record
        if bad and _SQLITE_CONTENTION not in record:
            problems.append(record.strip().splitlines()[0])
    return problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scheduled_prefect_yaml(tmp: Path, first_run: datetime) -> Path:
    """deployments/prefect.yaml with the production deployment's cron replaced by an interval
    schedule whose first run is at `first_run` (UTC), then every SCHEDULE_INTERVAL_SECONDS: the
    scheduler must create that run by itself. Everything else is the file as shipped."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (production,) = [d for d in spec["deployments"] if d["name"] == "production"]
    production["schedules"] = [
        {"interval": SCHEDULE_INTERVAL_SECONDS, "anchor_date": first_run.isoformat(), "timezone": "UTC", "active": True}
    ]
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _write_images(folder: Path, n_per_label: int, seed: int, prefix: str = "") -> None:
    for i, item in enumerate(motif_dataset(n_per_label=n_per_label, size=16, labels=("circle", "cross"), seed=seed)):
        path = folder / item.label / f"{prefix}{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)


class Stack:
    """The processes of one test and how to reach the server."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.images, self.out = tmp / "data" / "images", tmp / "runs" / "images"
        config = tmp / "tiny.yaml"
        config.write_text(yaml.safe_dump(TINY))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(tmp / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_CLI_PROMPT="false",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="2",
            # a stopped worker is marked offline 30-35 s later (3 missed heartbeats, then the foreman's
            # next loop, every 5 s), for `gcmine doctor`
            PREFECT_WORKER_HEARTBEAT_SECONDS="10",
            PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS="5",
            PREFECT_LOGGING_LEVEL="INFO",
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            GCMINE_REPO=str(ROOT),
            GCMINE_IMAGES=str(self.images),
            GCMINE_OUT=str(self.out),
            GCMINE_CONFIG=str(config),
        )
        self.env = env
        self.t0 = time.monotonic()

    def mark(self, what: str) -> None:
        """Phase timings, shown with `pytest -s` (to keep this test fast)."""
        print(f"[{time.monotonic() - self.t0:6.1f} s] {what}", flush=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc, log))
        return proc

    def call(self, *args: str, timeout: float = 180, code: int = 0) -> str:
        """Run `python ARGS` in the checkout with the stack's environment; its output (exit `code` expected)."""
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == code, (
            f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout + done.stderr

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}.log (tail)\n{log.read_text(errors='replace')[-4000:]}" for name, _, log in self.procs
        )

    def stop(self) -> list[int]:
        """SIGTERM to the process group of everything started here, SIGKILL after 15 s; flow-run
        subprocesses of the worker may sit in process groups of their own: those too. Returns
        the processes still alive after that (none expected)."""
        groups = {proc.pid for _, proc, _ in self.procs}
        spawned = [d for _, proc, _ in self.procs for d in _descendants(proc.pid)]
        for pid in spawned:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgid(0))  # never this test process's own group
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for _, proc, _ in self.procs:
            proc.wait(timeout=15)
        time.sleep(0.5)
        return [pid for pid in spawned if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# what Prefect's own client retries: the server answers 503 for an error a client may retry (SQLite's
# lock under load: a CI run once got it creating the watch run), the request's transaction rolled back
RETRY_STATUS = {429, 502, 503}


def _http(method: str, url: str, *, retry: bool = True, **kwargs) -> httpx.Response:
    """One call to the server's API: 60 s for a server slow under load, two more tries after a
    timeout (not for a call that creates something: `retry=False`, a timed-out call may have
    created it), and, for every call, up to five more after a retryable answer (`RETRY_STATUS`:
    nothing was done), 0.5-8 s apart, as Prefect's client does."""
    timeouts = 0
    for attempt in range(6):
        try:
            answer = httpx.request(method, url, timeout=60, **kwargs)
        except httpx.TimeoutException:
            timeouts += 1
            if not retry or timeouts == 3:
                raise
            continue
        if answer.status_code not in RETRY_STATUS or attempt == 5:
            return answer
        time.sleep(0.5 * 2**attempt)
    raise httpx.TimeoutException(f"{method} {url}: no answer in 6 tries")


def _get_ok(url: str) -> bool:
    """GET `url` answered 200 (a server slow under load may time out: not yet)."""
    try:
        return httpx.get(url, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_database):
    s = Stack(tmp_path_factory.mktemp("deploy"))
    _write_images(s.images, n_per_label=4, seed=5)
    # the server's database: a copy of the migrated one when a harness published it (tests/support/prefect_db.py)
    prefect_database.copy_to(Path(s.env["PREFECT_HOME"]) / "prefect.db")
    try:
        server = s.start("server", "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(s.port))
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, f"prefect server exited:\n{s.logs()}"
            assert time.monotonic() < deadline, f"prefect server not healthy after 150 s:\n{s.logs()}"
            try:
                if httpx.get(f"{s.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        s.mark("server healthy")
        # the worker creates the process pool (saves a `prefect work-pool create` subprocess)
        worker = s.start(
            "worker",
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            "gcmine-process",
            "--type",
            "process",
            "--limit",
            "2",
        )
        while not _get_ok(f"{s.api}/work_pools/gcmine-process"):
            assert worker.poll() is None, f"prefect worker exited:\n{s.logs()}"
            assert time.monotonic() < deadline + 120, f"no work pool after 120 s:\n{s.logs()}"
            time.sleep(1)
        s.mark("worker up")
        s.first_run = (datetime.now(UTC) + timedelta(seconds=SCHEDULE_LEAD_SECONDS)).replace(microsecond=0)
        prefect_file = _scheduled_prefect_yaml(s.tmp, s.first_run)
        s.deploy_output = s.call("-m", "prefect", "deploy", "--all", "--prefect-file", str(prefect_file), "--no-prompt")
        s.mark("deployed")
        assert datetime.now(UTC) < s.first_run - timedelta(seconds=5), (
            f"`prefect deploy` took longer than {SCHEDULE_LEAD_SECONDS - 5} s: raise SCHEDULE_LEAD_SECONDS"
        )
        yield s
    finally:
        survivors = s.stop()
    assert not survivors, f"processes left running: {survivors}"


def _deployment_id(stack: Stack, flow: str, name: str) -> str:
    r = _http("GET", f"{stack.api}/deployments/name/{flow}/{name}")
    assert r.status_code == 200, (flow, name, r.text, stack.deploy_output[-2000:])
    return r.json()["id"]


def _wait(stack: Stack, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _http("GET", f"{stack.api}/flow_runs/{run_id}").json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    raise AssertionError(
        f"flow run {run_id} not finished after {timeout} s (last state {run['state_type']}):\n{stack.logs()}"
    )


def test_deployments_on_a_real_server(stack) -> None:
    api = stack.api
    deployments = _http("POST", f"{api}/deployments/filter", json={}).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"production", "reprocess", "watch"}
    prod = by_name["production"]
    (schedule,) = prod["schedules"]
    assert schedule["active"] and schedule["schedule"]["interval"] == SCHEDULE_INTERVAL_SECONDS
    assert (
        prod["global_concurrency_limit"]["limit"] == 1
        and prod["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    )
    assert prod["parameters"] == {
        "images": str(stack.images),
        "out": str(stack.out),
        "config": stack.env["GCMINE_CONFIG"],
    }
    assert prod["work_pool_name"] == "gcmine-process"
    (trigger,) = _http("POST", f"{api}/automations/filter", json={}).json()
    assert trigger["name"] == "gcmine-reprocess-on-dataset-updated", trigger["name"]  # not "A custom trigger"

    # 1. the scheduler creates the production run by itself (nothing here starts it) at the
    #    schedule's first date, and the worker runs it
    deadline, scheduled = time.monotonic() + 60, []
    while not scheduled and time.monotonic() < deadline:
        scheduled = _http(
            "POST",
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [prod["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        ).json()
        time.sleep(1)
    assert scheduled, f"the scheduler created no run of the production deployment in 60 s:\n{stack.logs()}"
    stack.mark(f"{len(scheduled)} run(s) scheduled")
    first = scheduled[0]
    assert first["auto_scheduled"] and first["state_type"] == "SCHEDULED", first
    assert datetime.fromisoformat(first["expected_start_time"]) == stack.first_run
    assert len(scheduled) >= 2 and all(r["auto_scheduled"] for r in scheduled)  # the hourly ones after it: upcoming
    done = _wait(stack, first["id"], 60 + SCHEDULE_LEAD_SECONDS + 240)
    started = datetime.fromisoformat(done["start_time"])
    stack.mark(
        f"scheduled production run finished (started {(started - stack.first_run).total_seconds():.1f} s after its schedule)"
    )
    assert done["state_type"] == "COMPLETED", f"{done['state']}\n{stack.logs()}"
    assert done["name"] == "production-images"
    children = _http("POST", f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["gcmine"]}}}).json()
    assert [c["name"] for c in children] == ["mine-images"] and children[0]["parent_task_run_id"]
    assert children[0]["state_type"] == "COMPLETED"
    mined = json.loads((stack.out / "run.json").read_text())
    assert mined["summary"]["new_images"] == 8 and mined["reused"] == []
    # the UI's summary, element table and report link hang off the run the scheduler started (the
    # deployment's page), named after the dataset; the child's tasks keep their progress artifacts
    shown = _http("POST", f"{api}/artifacts/filter", json={"flow_runs": {"id": {"any_": [first["id"]]}}}).json()
    assert {a["key"] for a in shown} == {"gcmine-images-summary", "gcmine-images-elements", "gcmine-images-report"}, (
        shown
    )
    assert all(a["task_run_id"] is None for a in shown)

    # 2. two new images; the watch deployment (run now, on the worker) emits gcmine.dataset.updated,
    #    which starts `reprocess`
    _write_images(stack.images, n_per_label=1, seed=99, prefix="new-")
    reprocess_id = _deployment_id(stack, "gcmine-production", "reprocess")
    answer = _http("POST", f"{api}/deployments/{by_name['watch']['id']}/create_flow_run", json={}, retry=False)
    # once (a CI run on a loaded machine) the server answered 503 (retried in _http): say what it answered
    assert answer.is_success, f"create_flow_run of watch: HTTP {answer.status_code} {answer.text[:500]}\n{stack.logs()}"
    watch = answer.json()
    watched = _wait(stack, watch["id"], 120)
    stack.mark("watch run finished")
    assert watched["state_type"] == "COMPLETED", f"{watched['state']}\n{stack.logs()}"
    assert watched["name"] == "watch-images"
    deadline, runs = time.monotonic() + 120, []  # the event reaches the automation in seconds; more under load
    while not runs and time.monotonic() < deadline:
        runs = _http("POST", f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [reprocess_id]}}}).json()
        time.sleep(1)
    assert len(runs) == 1, f"the event started {len(runs)} reprocess run(s)\n{stack.logs()}"
    assert runs[0]["parameters"]["images"] == str(stack.images)
    assert runs[0]["parameters"]["out"] == str(stack.out)
    stack.mark("reprocess run created")
    done = _wait(stack, runs[0]["id"], 240)
    stack.mark("reprocess run finished")
    assert done["state_type"] == "COMPLETED", f"{done['state']}\n{stack.logs()}"
    assert done["name"] == "reprocess-images"
    events = _http(
        "POST", f"{api}/events/filter", json={"filter": {"event": {"name": ["gcmine.dataset.updated"]}}}
    ).json()["events"]
    assert len(events) == 1, events
    assert events[0]["payload"] == {
        "uri": str(stack.images),
        "out": str(stack.out),
        "added": 2,
        "changed": 0,
        "removed": 0,
        "files": 10,
    }
    assert events[0]["resource"]["prefect.resource.id"] == f"gcmine.dataset.{stack.images}"
    second = json.loads((stack.out / "run.json").read_text())
    # the incremental path: only the new images were decoded and scored, the model was kept
    assert second["summary"]["new_images"] == 2
    assert "finetune" in second["reused"] and "score[part-00000.parquet]" in second["reused"]
    assert second["summary"]["ok"] == 10

    # nothing changed since: `gcmine watch` compares with the watch run's listing and emits nothing
    again = stack.call(
        "-m",
        "gcmine.flows.cli",
        "watch",
        str(stack.images),
        "--out",
        str(stack.out),
        "--config",
        stack.env["GCMINE_CONFIG"],
    )
    stack.mark("second watch done")
    assert "0 added, 0 changed, 0 removed" in again and "emitted gcmine.dataset.updated" not in again, again

    # the server ran every service (scheduler included) without an error
    server_log = (stack.tmp / "server.log").read_text(errors="replace")
    problems = server_log_problems(server_log)
    assert not problems, (
        f"the server's log holds {len(problems)} error(s) or traceback(s): {problems}\n{server_log[-6000:]}"
    )


def test_server_log_check() -> None:
    """The server-log check flags the scheduler failure of SQLAlchemy 2.1 (excerpt of a real log)
    and any other error or traceback, and lets only SQLite's lock contention through."""
    scheduler = (
        "14:46:31.175 | ERROR   | docket.dependencies - schedule_deployments(){schedule_deployments}\n"
        "Traceback (most recent call last):\n"
        '  File "prefect/server/services/scheduler.py", line 273, in schedule_deployments\n'
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please supply a bulk_dml decorated function\n"
    )
    race = (
        "14:55:12.121 | ERROR   | prefect.server.utilities.worker_channel - Worker channel heartbeat persistence failed: "
        "work_pool=gcmine-process worker_name=ProcessWorker 1\nTraceback (most recent call last):\n"
        "sqlite3.OperationalError: database is locked\n"
    )
    info = "14:55:13.000 | INFO    | prefect.server - started\n"
    bare = "14:55:14.000 | INFO    | uvicorn.error - Exception in ASGI application\nTraceback (most recent call last):\nKeyError: 'x'\n"
    assert server_log_problems(info + race + info) == []
    assert server_log_problems(info + scheduler + race) == [scheduler.splitlines()[0]]
    assert server_log_problems(bare) == [bare.splitlines()[0]]
    assert server_log_problems("Traceback (most recent call last):\nValueError\n" + info) == [
        "Traceback (most recent call last):"
    ]


def test_doctor_on_the_real_setup(stack, tmp_path) -> None:
    """`gcmine doctor` after deploying (the run above done): every check passes and it exits 0;
    then, with the worker stopped, a GPU configured without its concurrency limit and a folder
    holding no image, it exits 1 with one line per problem and its fix. Stops the worker: last."""
    healthy = stack.call("-m", "gcmine.flows.cli", "doctor")
    stack.mark("doctor (healthy) done")
    lines = healthy.strip().splitlines()
    assert lines[-1] == "all checks passed" and all(line.startswith(("ok ", "skip ")) for line in lines[:-1]), healthy
    for needle in (
        f"ok    API          {stack.api} answers",
        "ok    schedule     gcmine-production/production: ",
        "ok    schedule     gcmine-watch/watch: ",
        "ok    trigger      gcmine-production/reprocess: automation gcmine-reprocess-on-dataset-updated enabled",
        "ok    worker       gcmine-process: 1 live worker(s)",
        f"ok    settings     settings file {stack.env['GCMINE_CONFIG']} valid (images, run root and settings from the production deployment",
        f"ok    images       {stack.images} readable",
        f"ok    run root     {stack.out} writable (holds a run)",
        "skip  GPU limit    no GPU configured here",
    ):
        assert needle in healthy, (needle, healthy)

    (worker,) = [proc for name, proc, _ in stack.procs if name == "worker"]
    # killed, not stopped gracefully: doctor must report a dead worker (a crashed one is the case it
    # exists for), and a graceful stop took 30-120 s on a loaded CI machine
    _signal_group(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    stack.mark("worker killed")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = _http("POST", f"{stack.api}/work_pools/gcmine-process/workers/filter", json={}).json()
        if workers and all(w["status"] == "OFFLINE" for w in workers):
            break
        time.sleep(2)
    stack.mark("worker stopped and offline")
    (tmp_path / "no-images").mkdir()
    broken = stack.call(
        "-m",
        "gcmine.flows.cli",
        "doctor",
        "--images",
        str(tmp_path / "no-images"),
        "--set",
        "runtime.device=cuda",
        code=1,
    )
    stack.mark("doctor (broken) done")
    failed = [line for line in broken.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 3, broken
    assert failed[0].startswith("FAIL  worker       gcmine-process: no live worker (1 offline, last heartbeat ")
    assert failed[0].endswith("-> from the checkout: GCMINE_REPO=$PWD prefect worker start --pool gcmine-process")
    assert failed[1] == (
        "FAIL  GPU limit    concurrency limit 'gpu' (runtime.gpu_limit) does not exist: GPU stages run unlimited "
        "-> prefect gcl create gpu --limit <number of GPUs>"
    )
    assert failed[2].startswith(f"FAIL  images       {tmp_path / 'no-images'} holds no image file")
    assert broken.strip().endswith("3 problem(s): fix them in this order, then run gcmine doctor again")
