"""The cluster stage on 1 000 000 embeddings of dimension 64, from the Parquet table to the artifacts.

Writes n float32 vectors from a mixture of 20 Gaussians as the embed stage writes them (one list
column), then, each in a fresh process so that its peak resident memory is its own:

- ``old``: the read the cluster task did before (pandas object column, ``np.stack``, float64),
- ``new``: `gcmine.tasks.infra.artifacts.read_embeddings` (the Arrow list buffer as float32, no per-row objects),
- ``stage``: the whole `cluster` task (mini-batch k-means, k = 20, metrics with the silhouette
  on ``cluster.silhouette_sample`` rows, all five tables written), then the `collection_map`
  task (PCA).

Prints seconds and peak RSS per step; the data alone is n x 64 x 4 bytes (244 MiB at 10^6).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cluster_stage_io.py [--n 1000000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMB = "stages/embeddings-bench.parquet"


def _rss_mib() -> float:
    """Peak resident size of this process image (VmHWM: unlike ru_maxrss, it does not inherit
    the parent's peak across fork + exec); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(out: str, n: int, dim: int, k: int = 20, seed: int = 0) -> None:
    from gcmine.tasks.infra.artifacts import MANIFEST
    from gcmine.tasks.infra.storage import RunStore

    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.5, size=(k, dim)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    X = rng.standard_normal(size=(n, dim), dtype=np.float32) + centers[y]
    ids = [f"{i:016x}" for i in range(n)]
    store = RunStore(out)
    store.write_parquet(MANIFEST, pd.DataFrame({"image_id": ids, "label": None, "status": "ok"}))
    store.write_parquet(EMB, pd.DataFrame({"image_id": ids, "embedding": list(X)}))


def child(mode: str, out: str) -> dict:
    from gcmine.tasks.cluster import cluster, collection_map
    from gcmine.tasks.infra.artifacts import read_embeddings
    from gcmine.tasks.infra.storage import RunStore
    from gcmodels.config import ClusterConfig, RuntimeConfig

    store = RunStore(out)
    base = _rss_mib()  # after the imports: the peak above it is the step's
    start = time.perf_counter()
    if mode == "old":
        emb = store.read_parquet(EMB)
        x = np.stack(emb["embedding"].to_numpy()).astype(np.float64)
        result = {"shape": list(x.shape), "dtype": str(x.dtype)}
    elif mode == "new":
        _, x = read_embeddings(store, EMB)
        result = {"shape": list(x.shape), "dtype": str(x.dtype)}
    else:
        done = cluster.fn(out, EMB, "bench", ClusterConfig(k=20), RuntimeConfig(device="cpu"))
        mid = time.perf_counter()
        mapped = collection_map.fn(out, EMB, done["clusters"], "pca", 0)
        result = {
            "k": done["k"],
            "silhouette": round(done["silhouette"], 4),
            "estimator": done["clustering"]["estimator"],
            "cluster_s": round(mid - start, 2),
            "map_s": round(time.perf_counter() - mid, 2),
            "map": mapped["method"],
        }
    return {
        "mode": mode,
        "seconds": round(time.perf_counter() - start, 2),
        "rss_before_mib": round(base),
        "peak_rss_mib": round(_rss_mib()),
        **result,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--child", choices=["old", "new", "stage"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.out)))
        return 0
    with tempfile.TemporaryDirectory(prefix="gcmine-bench-") as tmp:
        start = time.perf_counter()
        write(tmp, args.n, args.dim)
        size = (Path(tmp) / EMB).stat().st_size / 2**20
        print(
            f"n={args.n:,} dim={args.dim}: wrote {size:.0f} MiB of Parquet in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        for mode in ("old", "new", "stage"):
            res = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--out", tmp], capture_output=True, text=True
            )
            if res.returncode:
                print(f"{mode}: failed\n{res.stderr[-2000:]}")
                return 1
            print(res.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
