"""Cost of verifying what a rerun reuses (issue 22): a run root is mined once, then the same
command is rerun (everything reused: no model work) with the integrity checks and with them
replaced by the existence checks of before (cache hits: the output file exists; image shards and
the model: no check), alternately, `--repeats` times each. Also times the checks alone: every
cached Parquet output verified (footer, and page checksums up to 64 MiB), every image shard's
footer, the model's files against their recorded SHA-256.

    .venv/bin/python benchmarks/integrity_overhead.py [--images-per-label 100] [--shard-size 64] [--repeats 3]

The default is the demo's size (4 labels x 100 images at 32 px). Runs on an ephemeral Prefect
server in a temporary PREFECT_HOME unless PREFECT_API_URL is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images-per-label", type=int, default=100)
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gcmine-bench-prefect-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

    import gcmine.tasks.finetune
    import gcmine.tasks.infra.caching
    import gcmine.tasks.ingest
    from gcmine.flows.config import load_settings
    from gcmine.flows.pipeline import run_pipeline
    from gcmine.tasks.infra.integrity import artifact_damage, model_damage, parquet_damage
    from gcmine.tasks.infra.models import COMPLETE, model_fingerprint
    from gcmine.tasks.infra.storage import RunStore
    from gcmodels.data.synthetic import motif_dataset

    root = Path(tempfile.mkdtemp(prefix="gcmine-bench-integrity-"))
    images = root / "images"
    labels = ("circle", "cross", "triangle", "square")[: args.labels]
    for i, item in enumerate(motif_dataset(n_per_label=args.images_per_label, size=48, labels=labels, seed=5)):
        path = images / item.label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)
    out = root / "out"
    settings = load_settings(
        None,
        [
            f"data.resolution={args.resolution}",
            f"data.shard_size={args.shard_size}",
            "train.steps=20",
            "score.draws=4",
            "rank.feature_draws=1",
            "runtime.progress=false",
            "runtime.threads=1",
        ],
    )

    def rerun() -> float:
        start = time.perf_counter()
        result = run_pipeline(str(images), str(out), None, settings)
        assert "finetune" in result["reused"] and "embed" in result["reused"], result["reused"]
        return time.perf_counter() - start

    @contextlib.contextmanager
    def existence_checks_only():
        """The checks of before issue 22: a cache hit's outputs exist; shards and the model unchecked."""
        saved = (
            gcmine.tasks.infra.caching.artifact_damage,
            gcmine.tasks.finetune.model_damage,
            gcmine.tasks.ingest.parquet_damage_or_missing,
        )
        gcmine.tasks.infra.caching.artifact_damage = lambda store, rel: None if store.exists(rel) else "missing"
        gcmine.tasks.finetune.model_damage = lambda *a, **k: None
        gcmine.tasks.ingest.parquet_damage_or_missing = lambda store, rel: None if store.exists(rel) else "missing"
        try:
            yield
        finally:
            (
                gcmine.tasks.infra.caching.artifact_damage,
                gcmine.tasks.finetune.model_damage,
                gcmine.tasks.ingest.parquet_damage_or_missing,
            ) = saved

    n = len(labels) * args.images_per_label
    start = time.perf_counter()
    run_pipeline(str(images), str(out), None, settings)
    print(
        f"{n} images, {-(-n // args.shard_size)} shards, resolution {args.resolution}; first run {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    rerun()  # warm caches (imports, page cache) before timing

    with_checks, without = [], []
    for _ in range(args.repeats):
        with_checks.append(rerun())
        with existence_checks_only():
            without.append(rerun())

    store = RunStore(str(out))
    cached = [
        p
        for folder in ("stages", "maps", "scores", "patch_candidates", "embeddings")
        if (out / folder).is_dir()
        for p in sorted((out / folder).glob("*.parquet"))
    ]
    shards = sorted((out / "images").glob("part-*.parquet"))
    marker = json.loads((out / "model" / COMPLETE).read_text())
    t = time.perf_counter()
    for p in cached:
        assert artifact_damage(store, p.relative_to(out).as_posix()) is None
    t_cached = time.perf_counter() - t
    t = time.perf_counter()
    for p in shards:
        assert parquet_damage(store, p.relative_to(out).as_posix(), full_below=0) is None
    t_shards = time.perf_counter() - t
    t = time.perf_counter()
    assert model_damage(store, "model", marker, model_fingerprint) is None
    t_model = time.perf_counter() - t
    mib = sum(p.stat().st_size for p in cached) / 2**20
    print(f"| rerun, everything reused | median of {args.repeats} | runs (s) |")
    print("|---|---|---|")
    print(
        f"| with integrity checks | {statistics.median(with_checks):.2f} s | {', '.join(f'{x:.1f}' for x in with_checks)} |"
    )
    print(
        f"| existence checks only (before) | {statistics.median(without):.2f} s | {', '.join(f'{x:.1f}' for x in without)} |"
    )
    print(
        f"checks alone: {len(cached)} cached outputs ({mib:.1f} MiB) {t_cached * 1000:.0f} ms, "
        f"{len(shards)} shard footers {t_shards * 1000:.0f} ms, model files {t_model * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
