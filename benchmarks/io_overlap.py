"""Does the card wait on Parquet or S3? Score and rank stage wall time against the sum of compute alone.

The score and rank tasks hold the GPU slot (tasks/infra/gpu.py) only around their compute; with
two task-runner threads (`runtime.workers=auto` on CUDA) one shard is read or written while
another computes. This runs the real tasks (`score_shard`, `rank_shard`, mapped by the flow's
own helpers under the flow's own task runner, on an ephemeral Prefect server) over S shards, on
a simulated card:

- the slot is the real CUDA one (`gpu_slot` with device cuda:0: the process lock of the card
  and one slot of the Prefect concurrency limit `gpu`, created with 1 slot), so at most one
  shard computes at a time, as on a GPU;
- the compute is GPU-like: the real tiny pixel model, plus `--sleep` seconds per denoiser forward
  (a sleep releases the GIL and the cores, as a GPU kernel does while the host waits);
- the I/O is real: the working images (PNG in Parquet) read and decoded, maps of
  `--resolution` pixels written as zstd Parquet, in a local run root, or (`--s3`) in a moto S3
  server in another process with `--latency` seconds added to every request.

For each `--workers` value the prepared run root (ingested, model trained) is copied and scored
and ranked afresh. Prints per stage: the wall time of the mapped stage, the sum of compute alone
(slot held), the sum of I/O alone (each task's time outside the slot, less its wait for the
slot), the time tasks waited for the card, and the card's idle time (wall - compute). Every
Parquet output of each run is compared byte for byte with the first run's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/io_overlap.py [--shards 8] [--shard-size 32]
        [--resolution 128] [--draws 4] [--sleep 0.1] [--workers 1 2 3] [--s3] [--latency 0.03]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# a moto S3 server whose every request takes `latency` seconds more (run in its own process)
_SLOW_MOTO = """
import logging, sys, time
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
logging.getLogger("werkzeug").setLevel(logging.ERROR)
port, latency = int(sys.argv[1]), float(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
def slow(environ, start_response):
    time.sleep(latency)
    return app(environ, start_response)
make_server("127.0.0.1", port, slow, threaded=True).serve_forever()
"""
KEY, SECRET = "AKIAGCMINEBENCH00001", "gcmine-bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(latency: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_MOTO, str(port), str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


class Timeline:
    """Per task thread: time spent waiting for and holding the (simulated) card."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, float, float, float]] = []  # (stage, asked, got, released)

    def slot(self, stage: str):
        from gcmine.tasks.infra.gpu import gpu_slot

        card = __import__("torch").device("cuda", 0)

        @contextmanager
        def simulated(device, runtime):
            asked = time.perf_counter()
            with gpu_slot(card, runtime):  # the real CUDA rule: the card's process lock + the Prefect limit
                got = time.perf_counter()
                try:
                    yield
                finally:
                    released = time.perf_counter()
            with self.lock:
                self.spans.append((stage, asked, got, released))

        return simulated

    def sums(self, stage: str) -> tuple[float, float]:
        """(compute: slot held, wait: asked -> got) summed over the stage's tasks."""
        rows = [s for s in self.spans if s[0] == stage]
        return sum(r - g for _, _, g, r in rows), sum(g - a for _, a, g, _ in rows)


def _prepare(args, root: Path) -> tuple[str, list[dict], str]:
    """Images -> a local run root, ingested and with a (2-step) trained model."""
    from gcmine.tasks.finetune import finetune
    from gcmine.tasks.ingest import ingest
    from gcmodels.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from gcmodels.data.synthetic import motif_dataset

    images = root / "images"
    n = args.shards * args.shard_size
    for i, item in enumerate(
        motif_dataset(n_per_label=-(-n // 2), size=args.resolution, labels=("circle", "cross"), seed=5)
    ):
        path = images / item.label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)
    out = root / "base"
    ingested = ingest.fn(
        str(images), None, str(out), DataConfig(resolution=args.resolution, shard_size=args.shard_size)
    )
    names = [s["name"] for s in ingested["shards"]]
    trained = finetune.fn(
        str(out),
        names,
        args.resolution,
        ModelConfig(block_out_channels=(8, 16)),
        TrainConfig(steps=2, batch_size=4, warmup_steps=0),
        RuntimeConfig(device="cpu", threads=1, progress=False),
    )
    return str(out), ingested["shards"], trained["fingerprint"]


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.1, help="seconds added to every denoiser forward")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--s3", action="store_true", help="run roots on a moto S3 server in another process")
    ap.add_argument("--latency", type=float, default=0.03, help="seconds added to every S3 request (--s3)")
    args = ap.parse_args()
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gcmine-bench-prefect-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

    import torch
    from prefect import flow

    import gcmine.tasks.infra.models as models
    import gcmine.tasks.rank as rank
    import gcmine.tasks.score as score
    from gcmine.flows.pipeline import _map_score, task_runner
    from gcmine.tasks.infra.caching import map_cached
    from gcmine.tasks.infra.storage import RunStore
    from gcmodels.config import Settings, StorageConfig

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="gcmine-bench-overlap-"))
    moto = None
    try:
        base, shards, fingerprint = _prepare(args, root)
        so: dict | None = None
        if args.s3:
            moto, endpoint = _start_moto(args.latency)
            # the credentials the deployment's environment gives (Prefect persists each task's cached result there)
            os.environ.update(
                {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
            )
            so = StorageConfig(endpoint_url=endpoint, key=KEY, secret=SECRET).store_options()
            RunStore("s3://bench/x", so).fs.mkdir("bench")

        loaded = models.load_model

        def slow_model(*a, **kw):  # GPU-like compute: the real forward, then a sleep that frees the cores
            model = loaded(*a, **kw)
            if not getattr(model, "_bench_sleep", False):
                model.network.register_forward_pre_hook(lambda module, inputs: time.sleep(args.sleep))
                model._bench_sleep = True
            return model

        models.load_model = slow_model
        timeline = Timeline()
        score.gpu_slot = timeline.slot("score")
        rank.gpu_slot = timeline.slot("rank")

        @flow(name="io-overlap", validate_parameters=False)
        def stages(out: str, settings: Settings) -> dict:
            start = time.perf_counter()
            scored = _map_score(out, [(s, None) for s in shards], fingerprint, None, settings, so, settings.score)
            mid = time.perf_counter()
            ranked = map_cached(
                rank.rank_shard,
                ("candidates",),
                ("shard", "maps", "latents"),
                [(shard, s["maps"], None) for shard, (s, _) in zip(shards, scored)],
                out=out,
                fingerprint=fingerprint,
                patch_size=settings.patch_size,
                config=settings.rank,
                runtime=settings.runtime,
                storage_options=so,
            )
            end = time.perf_counter()
            return {
                "score": (mid - start, sum(r["seconds"] for r, _ in scored)),
                "rank": (end - mid, sum(r["seconds"] for r, _ in ranked)),
            }

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        with get_client(sync_client=True) as client:  # one GPU: the limit the production setup creates
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
        settings = Settings.from_dict({"runtime": {"device": "cpu"}})
        with timeline.slot("warm-up")(None, settings.runtime):  # the server's first slot is slow: not timed
            pass

        n = args.shards * args.shard_size
        where = f"S3 (moto, +{args.latency * 1000:.0f} ms a request)" if args.s3 else "local disk"
        print(
            f"{n} images in {args.shards} shards of {args.shard_size}, {args.resolution} px, N={args.draws} draws, "
            f"+{args.sleep * 1000:.0f} ms per forward, run root on {where}, torch threads 1, {os.cpu_count()} CPUs",
            file=sys.stderr,
        )
        print(
            "| stage | workers | wall s | compute s (sum) | I/O s (sum) | waited for card s | card idle s | wall / compute |"
        )
        print("|---|---|---|---|---|---|---|---|")
        reference: dict[str, str] | None = None
        for count in args.workers:
            if args.s3:
                out = f"s3://bench/run-{count}"
                RunStore(out, so).fs.put(base + "/", f"bench/run-{count}", recursive=True)
            else:
                out = str(root / f"run-{count}")
                shutil.copytree(base, out)
            settings = Settings.from_dict(
                {
                    "data": {"resolution": args.resolution, "shard_size": args.shard_size},
                    "score": {"draws": args.draws, "batch_size": 32},
                    "rank": {"feature_draws": 2, "per_image": 3},
                    "runtime": {
                        "device": "cpu",
                        "threads": 1,
                        "progress": False,
                        "workers": count,
                        "gpu_limit": os.environ.get("BENCH_LIMIT", "gpu") or None,
                    },
                }
            )
            models.load_model(RunStore(out, so), fingerprint, torch.device("cpu"))  # loaded once per worker
            timeline.spans.clear()
            walls = stages.with_options(task_runner=task_runner(settings.runtime))(out, settings)
            for stage, (wall, seconds) in walls.items():
                compute, wait = timeline.sums(stage)
                io = seconds - compute - wait
                print(
                    f"| {stage} | {count} | {wall:.2f} | {compute:.2f} | {io:.2f} | {wait:.2f} | "
                    f"{wall - compute:.2f} | {wall / compute:.2f} |",
                    flush=True,
                )
            store = RunStore(out, so)
            files = {
                f"{folder}/{name}": store.read_bytes(f"{folder}/{name}")
                for folder in ("maps", "scores", "patch_candidates")
                for name in store.list_files(folder)
                if name.endswith(".parquet")
            }
            digests = _digests(files)
            if reference is None:
                reference = digests
                print(f"  ({len(files)} Parquet outputs)", file=sys.stderr)
            else:
                same = digests == reference
                print(f"  workers={count}: every Parquet output identical to workers={args.workers[0]}: {same}")
                if not same:
                    differ = sorted(k for k in set(digests) | set(reference) if digests.get(k) != reference.get(k))
                    print(f"  differ: {differ[:5]}", file=sys.stderr)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
