"""Scale-out: wall time of the score and rank stages under each task runner.

One warm-up run trains the model; then, for each runner configuration, the same run root is run
again with another `score.seed`, so ingest, embed, cluster and fine-tuning come from the stage
cache and only scoring, ranking and the report are recomputed. Prints the wall time of each run
(from the flow call to its return), the stage timings of `run.json` (sums of per-shard seconds,
not wall time) and the worker processes that computed the shards.

    .venv/bin/python benchmarks/scaleout.py [--images-per-label 24] [--shard-size 8] [--draws 32]
        [--configs threads:1 threads:2 dask:2]

Runs on an ephemeral Prefect server in a temporary PREFECT_HOME unless PREFECT_API_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images-per-label", type=int, default=24)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["threads:1", "threads:2", "dask:2"],
        help="RUNNER:N, N = threads (threads) or local worker processes (dask)",
    )
    args = ap.parse_args()
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gcmine-bench-prefect-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

    from gcmine.flows.config import load_settings
    from gcmine.flows.pipeline import run_pipeline
    from gcmodels.data.synthetic import motif_dataset

    root = Path(tempfile.mkdtemp(prefix="gcmine-bench-scaleout-"))
    images = root / "images"
    for i, item in enumerate(
        motif_dataset(n_per_label=args.images_per_label, size=48, labels=("circle", "cross"), seed=5)
    ):
        path = images / item.label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)
    out = root / "out"
    base = [
        f"data.resolution={args.resolution}",
        f"data.shard_size={args.shard_size}",
        "embed.dim=8",
        "cluster.k=2",
        "model.block_out_channels=[32, 64]",
        "train.steps=20",
        "train.batch_size=16",
        "train.warmup_steps=2",
        f"score.draws={args.draws}",
        "score.batch_size=64",
        "rank.feature_draws=2",
        "report.heatmaps_per_label=1",
        "runtime.progress=false",
        "runtime.threads=1",
    ]

    def run(extra: list[str]) -> tuple[float, dict]:
        settings = load_settings(None, base + extra)
        start = time.perf_counter()
        run_pipeline(str(images), str(out), None, settings)
        return time.perf_counter() - start, json.loads((out / "run.json").read_text())

    n = 2 * args.images_per_label
    print(
        f"{n} images, {-(-n // args.shard_size)} shards of {args.shard_size}, {args.draws} draws, "
        f"resolution {args.resolution}, torch threads 1 per worker, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    wall, _ = run(["score.seed=0"])
    print(f"warm-up (trains the model): {wall:.1f} s", file=sys.stderr)
    print("| runner | workers | wall s (score+rank+report) | score s (sum of shards) | rank s | shard processes |")
    print("|---|---|---|---|---|---|")
    for i, config in enumerate(args.configs, start=1):
        runner, count = config.split(":")
        extra = [f"score.seed={i}", f"runtime.runner={runner}"]
        extra.append(f"runtime.workers={count}" if runner == "threads" else f"runtime.dask_workers={count}")
        wall, info = run(extra)
        stages = info["stages"]
        procs = len(set(stages["score"]["workers"]) | set(stages["rank"]["workers"]))
        print(
            f"| {runner} | {count} | {wall:.1f} | {info['timings']['score']:.1f} | {info['timings']['rank']:.1f} | {procs} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
