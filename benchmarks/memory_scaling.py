"""Peak resident memory of the score and rank stages as the dataset grows (shards must stream).

For each size (default 100, 1 000, 10 000 images of 64x64, two labels, random pixels), the
collection is written as PNGs and ingested with the ingest task (shards of `data.shard_size`),
a tiny untrained model is published with the finetune task (one step: memory, not quality, is
measured), and then, each in a fresh process, every shard is scored (`score_shard`) and ranked
(`rank_shard`) one after the other, as the flow does with one worker. Each process prints its
peak RSS (VmHWM): flat across sizes = the stages stream their shards.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_scaling.py [--sizes 100 1000 10000]

`--elements` measures the elements stage instead, on synthetic candidates (no model): 5 patches
an image with Stable-Diffusion-sized features (1 280 floats), 3 labels, shards of 256 images,
for each size (default 1 000, 10 000, 100 000 images): the stage as it is (candidates as
rank_shard writes them: only each shard's own best `per_label` per label keep a feature, merged
shard by shard), and the former one (every candidate with its feature, concatenated), each in a
fresh process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_scaling.py --elements [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np

from gcmodels.config import DataConfig, ModelConfig, RankConfig, RuntimeConfig, ScoreConfig, TrainConfig

RES = 64
DATA = DataConfig(resolution=RES)
MODEL = ModelConfig(block_out_channels=(8, 16), num_train_timesteps=100)
TRAIN = TrainConfig(steps=1, batch_size=8, warmup_steps=0)
SCORE = ScoreConfig(draws=1)
RANK = RankConfig(feature_draws=1)
RUNTIME = RuntimeConfig(device="cpu", threads=1, progress=False)
PATCH = 13  # 0.2 x 64


def no_api() -> None:
    """Run the task functions without a Prefect API: progress artifacts are skipped (StageProgress
    tolerates that), so no in-process Prefect server is started and its memory is not measured."""
    import prefect.artifacts

    def refuse(**_kw: object) -> None:
        raise RuntimeError("no Prefect API in this benchmark")

    prefect.artifacts.create_progress_artifact = refuse


def peak_mib() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: that survives fork + exec, so a child
    would report the parent's peak (here: the set-up that held every image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def rss_mib() -> float:
    """Current RSS of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def setup(work: Path, n: int) -> dict:
    from PIL import Image

    from gcmine.tasks.finetune import finetune
    from gcmine.tasks.ingest import ingest

    no_api()
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = work / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    ingested = ingest.fn(str(work / "images"), None, str(work / "run"), DATA)
    names = [s["name"] for s in ingested["shards"]]
    trained = finetune.fn(str(work / "run"), names, RES, MODEL, TRAIN, RUNTIME)
    return {"shards": ingested["shards"], "fingerprint": trained["fingerprint"]}


def stage(work: Path, which: str) -> None:
    """Child process: run one stage over every shard, then print the peak RSS as JSON."""
    from gcmine.tasks.rank import rank_shard
    from gcmine.tasks.score import score_shard

    no_api()
    info = json.loads((work / "setup.json").read_text())
    out = str(work / "run")
    base = peak_mib()
    start = time.perf_counter()
    maps, trace = [], []
    if which == "score":
        for shard in info["shards"]:
            maps.append(score_shard.fn(out, shard, info["fingerprint"], SCORE, RUNTIME)["maps"])
            trace.append(rss_mib())
        (work / "maps.json").write_text(json.dumps(maps))
    else:
        maps = json.loads((work / "maps.json").read_text())
        for shard, m in zip(info["shards"], maps):
            rank_shard.fn(out, shard, m, info["fingerprint"], PATCH, RANK, RUNTIME)
            trace.append(rss_mib())
    print(
        json.dumps(
            {
                "stage": which,
                "peak_mib": peak_mib(),
                "after_imports_mib": base,
                "rss_trace": trace,
                "seconds": time.perf_counter() - start,
                "shards": len(info["shards"]),
            }
        )
    )


FEATURE_DIM = 1280  # Stable Diffusion's up_blocks[1] channels
ELEMENT_SHARD = 256  # images per shard (data.shard_size)
ELEMENT_RANK = RankConfig(per_label=1000, elements=32)  # the paper's 1000 patches and 32 elements per label


def write_candidates(work: Path, n: int) -> dict:
    """Synthetic candidates of `n` images in shards, twice: as rank_shard writes them now
    (`pruned/`) and with every feature (`full/`, the former format)."""
    from gcmine.tasks.infra.storage import RunStore
    from gcmine.tasks.rank import _NO_FEATURE, _top_per_label

    rng = np.random.default_rng(n)
    names = []
    for store_name in ("pruned", "full"):
        (work / store_name).mkdir()
    for s, start in enumerate(range(0, n, ELEMENT_SHARD)):
        import pandas as pd

        m = min(ELEMENT_SHARD, n - start) * 5
        ids = np.repeat([f"{i:012x}" for i in range(start, start + m // 5)], 5)
        table = pd.DataFrame(
            {
                "image_id": ids,
                "label": rng.choice(["a", "b", "c"], m // 5).repeat(5),
                "rank": np.tile(np.arange(5), m // 5),
                "x0": rng.integers(0, 400, m),
                "y0": rng.integers(0, 400, m),
                "x1": rng.integers(400, 512, m),
                "y1": rng.integers(400, 512, m),
                "wx0": 0,
                "wy0": 0,
                "wx1": 64,
                "wy1": 64,
                "typicality": rng.normal(size=m).astype(np.float32),
                "draws": 16,
                "top_patch_se": np.nan,
                "feature": list(rng.normal(size=(m, FEATURE_DIM)).astype(np.float32)),
            }
        )
        name = f"patch_candidates/part-{s:05d}.parquet"
        names.append(name)
        RunStore(str(work / "full")).write_parquet(name, table)
        kept = table.index.isin(_top_per_label(table, ELEMENT_RANK.per_label))
        table["feature"] = [f if keep else _NO_FEATURE for f, keep in zip(table["feature"], kept)]
        RunStore(str(work / "pruned")).write_parquet(name, table)
    return {"names": names}


def elements_stage(work: Path, which: str) -> None:
    """Child process: the elements stage (`now`, on pruned candidates) or the former one
    (`before`, every candidate concatenated with its feature); prints the peak RSS as JSON."""
    import pandas as pd

    from gcmine.tasks.infra.storage import RunStore
    from gcmine.tasks.rank import elements
    from gcmodels.mining.elements import mine_elements

    no_api()
    names = json.loads((work / "setup.json").read_text())["names"]
    base = peak_mib()
    start = time.perf_counter()
    if which == "now":
        elements.fn(str(work / "pruned"), names, ELEMENT_RANK)
    else:
        store = RunStore(str(work / "full"))
        cand = pd.concat([store.read_parquet(c) for c in names], ignore_index=True)
        cand["element"] = -1
        for _, group in cand.groupby("label", sort=True):
            top = group.nlargest(ELEMENT_RANK.per_label, "typicality", keep="first")
            found = mine_elements(
                np.stack(top["feature"].to_numpy()), top["typicality"].to_numpy(), ELEMENT_RANK.elements, seed=0
            )
            cand.loc[top.index, "element"] = found.assignment
    print(
        json.dumps(
            {"stage": which, "peak_mib": peak_mib(), "after_imports_mib": base, "seconds": time.perf_counter() - start}
        )
    )


def elements_main(sizes: list[int]) -> int:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="gcmine-mem-el-") as tmp:
            work = Path(tmp)
            (work / "setup.json").write_text(json.dumps(write_candidates(work, n)))
            disk = {d: sum(f.stat().st_size for f in (work / d).rglob("*.parquet")) / 2**20 for d in ("pruned", "full")}
            for which in ("now", "before"):
                res = subprocess.run(
                    [sys.executable, __file__, "--stage", f"elements-{which}", "--work", str(work)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["candidates_mib"] = disk["pruned" if which == "now" else "full"]
                rows.append({"images": n, **row})
                print(
                    f"  {n} images, elements ({which}): {row['peak_mib']:.0f} MiB peak ({row['seconds']:.1f} s)",
                    flush=True,
                )
    print(
        f"\nelements stage: 5 candidate patches an image, {FEATURE_DIM}-float features, 3 labels, {ELEMENT_SHARD} images a shard, "
        f"per_label {ELEMENT_RANK.per_label}, {ELEMENT_RANK.elements} elements, 1 thread"
    )
    print(
        f"{'images':>8}{'stage':>8}{'peak RSS MiB':>14}{'after imports':>15}{'above imports':>15}{'candidates MiB':>16}{'seconds':>9}"
    )
    for r in rows:
        print(
            f"{r['images']:>8}{r['stage']:>8}{r['peak_mib']:>14.0f}{r['after_imports_mib']:>15.0f}"
            f"{r['peak_mib'] - r['after_imports_mib']:>15.0f}{r['candidates_mib']:>16.0f}{r['seconds']:>9.1f}"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--trace", action="store_true", help="print the RSS after every shard")
    ap.add_argument("--elements", action="store_true", help="measure the elements stage on synthetic candidates")
    ap.add_argument("--stage", choices=["score", "rank", "elements-now", "elements-before"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        if args.stage.startswith("elements-"):
            elements_stage(Path(args.work), args.stage.removeprefix("elements-"))
        else:
            stage(Path(args.work), args.stage)
        return 0
    if args.elements:
        return elements_main(args.sizes if args.sizes != [100, 1000, 10000] else [1000, 10000, 100000])
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="gcmine-mem-") as tmp:
            work = Path(tmp)
            start = time.perf_counter()
            (work / "setup.json").write_text(json.dumps(setup(work, n)))
            setup_s = time.perf_counter() - start
            for which in ("score", "rank"):
                res = subprocess.run(
                    [sys.executable, __file__, "--stage", which, "--work", str(work)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append({"images": n, **row, "setup_s": setup_s})
                print(f"  {n} images, {which}: {row['peak_mib']:.0f} MiB peak ({row['seconds']:.0f} s)", flush=True)
    print(
        f"\n64x64 images, {DATA.shard_size} per shard, tiny untrained model {MODEL.block_out_channels}, "
        f"N={SCORE.draws} draw, {RANK.feature_draws} feature draw, 1 thread"
    )
    print(
        f"{'images':>8}{'shards':>8}{'stage':>7}{'peak RSS MiB':>14}{'after imports':>15}"
        f"{'RSS after shard 1':>19}{'after last':>12}{'seconds':>9}"
    )
    for r in rows:
        print(
            f"{r['images']:>8}{r['shards']:>8}{r['stage']:>7}{r['peak_mib']:>14.0f}{r['after_imports_mib']:>15.0f}"
            f"{r['rss_trace'][0]:>19.0f}{r['rss_trace'][-1]:>12.0f}{r['seconds']:>9.0f}"
        )
    if args.trace:
        for r in rows:
            print(
                f"RSS after each shard, {r['images']} images, {r['stage']}: "
                + " ".join(f"{v:.0f}" for v in r["rss_trace"])
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
