"""Adaptive draws (issue 19): plain scoring at N and at 4N against adaptive scoring at N.

Builds the demo motif dataset (benchmarks/ground_truth.py), runs the whole flow once with plain
scoring at N (this trains the model), then again on the same run root (fine-tuning is reused,
score / rank / elements run again) for every other variant, and prints per variant:

- UNet passes spent by the score stage (2 per draw, total and per image: typicality.parquet's
  `draws` column);
- pointing: the share of images whose rank-0 patch contains the motif centre, over all images
  and over the images that have a patch in their label's top-K (the patches the user reads);
- the top element's purity (share of its patches on the motif; the smallest over the labels);
- the overlap of each label's top-K patch set (rank.per_label = K, patches identified by image
  and box) with that of plain scoring at 4N, averaged over the labels;
- the score stage's wall time (the task's stopwatch).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptive_draws.py                 # 4 x 40 images
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptive_draws.py --draws 16 --top-k 40 --extra
    # one trained model for many variants: --out keeps the work folder, --variants picks the runs
    # (plain:N[:K], adaptive:N:RULE:Z[:K[:VARIANCE]]; RULE elimination or decision, K = rank.per_label of
    # that run, VARIANCE score.adaptive_variance: own or moderated),
    # each variant's outputs are kept in OUT/results/, and --report prints the table of all kept ones
    ... adaptive_draws.py --out W --variants plain:16 plain:64 --top-k 1000
    ... adaptive_draws.py --out W --variants adaptive:16:decision:2 adaptive:16:elimination:2:10
    ... adaptive_draws.py --out W --report --compare-k 10 1000
Target (issue 19): adaptive at N spends <= 1/3 of plain at N's passes, pointing and purity no
lower, top-K overlap with plain at 4N at least that of plain at N.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from ground_truth import write_dataset

from gcmine.flows.config import load_settings
from gcmodels.mining.evaluation import localisation_report

BOX = ["x0", "y0", "x1", "y1"]


def top_k(patches: pd.DataFrame, k: int) -> dict[str, set]:
    """Each label's k most typical patches as a set of (image_id, x0, y0, x1, y1)."""
    ranked = patches.sort_values("typicality", ascending=False, kind="stable").groupby("label", sort=True).head(k)
    return {lab: set(map(tuple, g[["image_id", *BOX]].to_numpy().tolist())) for lab, g in ranked.groupby("label")}


def run_variant(dataset: Path, out: Path, base: list[str], extra: list[str]) -> dict:
    from gcmine.flows.pipeline import run_pipeline
    from gcmine.tasks.infra.artifacts import PATCHES, TYPICALITY
    from gcmine.tasks.infra.storage import RunStore

    settings = load_settings(None, base + extra)
    start = time.perf_counter()
    result = run_pipeline(str(dataset), str(out), None, settings)
    wall = time.perf_counter() - start
    store = RunStore(str(out))
    return {
        "patches": store.read_parquet(PATCHES),
        "typicality": store.read_parquet(TYPICALITY),
        "score_s": result["stages"]["score"]["seconds"],
        "wall_s": wall,
        "k": settings.rank.per_label,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=40, help="images per label (4 labels)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=16, help="N")
    ap.add_argument("--top-k", type=int, default=40, help="rank.per_label: patches per label the ranking keeps")
    ap.add_argument("--steps", type=int, default=400, help="fine-tuning steps")
    ap.add_argument("--extra", action="store_true", help="also plain at N/4 and N/2 and adaptive at 4N (the curve)")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--variants",
        nargs="*",
        help="plain:N[:K] or adaptive:N:RULE:Z[:K[:VARIANCE]] (default: the three of the issue)",
    )
    ap.add_argument("--report", action="store_true", help="only print the table of the variants kept in OUT/results")
    ap.add_argument("--compare-k", type=int, nargs="*", help="top-K sizes of the overlap column(s) (default: --top-k)")
    args = ap.parse_args()
    if args.variants is not None or args.report:
        return stored_main(args)

    work = Path(args.out or tempfile.mkdtemp(prefix="gcmine-adaptive-"))
    truth = write_dataset(work / "dataset", args.per_label, args.size, args.seed)
    base = [
        f"train.steps={args.steps}",
        f"rank.per_label={args.top_k}",
        "rank.elements=4",
        "runtime.progress=false",
        "runtime.threads=1",
        *args.overrides,
    ]
    n = args.draws
    variants = [(f"plain N={n}", [f"score.draws={n}"]), (f"plain 4N={4 * n}", [f"score.draws={4 * n}"])]
    variants.append((f"adaptive N={n}", [f"score.draws={n}", "score.adaptive=true"]))
    if args.extra:
        variants += [
            (f"plain N={max(1, n // 4)}", [f"score.draws={max(1, n // 4)}"]),
            (f"plain N={max(1, n // 2)}", [f"score.draws={max(1, n // 2)}"]),
            (f"adaptive N={4 * n}", [f"score.draws={4 * n}", "score.adaptive=true"]),
        ]
    results = {}
    for name, extra in variants:
        t0 = time.perf_counter()
        results[name] = run_variant(work / "dataset", work / "run", base, extra)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s (score {results[name]['score_s']:.1f} s)", flush=True)

    ref = top_k(results[f"plain 4N={4 * n}"]["patches"], args.top_k)
    print(
        f"\nadaptive draws: {len(truth)} motif images of {args.size}x{args.size}, 4 labels, top-K = {args.top_k} "
        f"patches per label, {args.steps} fine-tuning steps, overrides {args.overrides or 'none'}"
    )
    header = (
        f"{'variant':<18}{'passes':>9}{'/image':>8}{'vs N':>7}{'point all':>10}{'point topK':>11}"
        f"{'purity min':>11}{'overlap 4N':>11}{'score s':>9}"
    )
    print(header)
    plain_passes = 2 * results[f"plain N={n}"]["typicality"]["draws"].sum()
    for name, r in results.items():
        passes = 2 * int(r["typicality"]["draws"].sum())
        rep = localisation_report(r["patches"], truth)
        mine = top_k(r["patches"], args.top_k)
        in_top = {i for s in mine.values() for (i, *_) in s}
        rep_top = localisation_report(r["patches"][r["patches"]["image_id"].isin(in_top)], truth)
        overlap = np.mean([len(mine.get(lab, set()) & ref[lab]) / max(1, len(ref[lab])) for lab in ref])
        print(
            f"{name:<18}{passes:>9}{passes / len(r['typicality']):>8.1f}{passes / plain_passes:>7.2f}"
            f"{rep['rank0_centre']:>10.3f}{rep_top['rank0_centre']:>11.3f}{rep['min_top_element_purity']:>11.3f}"
            f"{overlap:>11.3f}{r['score_s']:>9.1f}"
        )
    print(f"work folder: {work}")
    return 0


def parse_variant(spec: str, top_k: int) -> tuple[str, list[str]]:
    """A variant's name and its settings from plain:N[:K] or adaptive:N:RULE:Z[:K[:VARIANCE]] (VARIANCE:
    score.adaptive_variance, own by default)."""
    kind, *rest = spec.split(":")
    if kind == "plain":
        n, *k = rest
        if k:
            return f"plain N={n} K={k[0]}", [f"score.draws={n}", f"rank.per_label={k[0]}"]
        return f"plain N={n}", [f"score.draws={n}", f"rank.per_label={top_k}"]
    n, rule, z, *more = rest
    k_run = int(more[0]) if more else top_k
    variance = more[1] if len(more) > 1 else "own"
    name = f"adaptive N={n} {rule} z={z} K={k_run}" + (f" {variance}" if variance != "own" else "")
    return name, [
        f"score.draws={n}",
        "score.adaptive=true",
        f"score.adaptive_rule={rule}",
        f"score.adaptive_z={z}",
        f"score.adaptive_variance={variance}",
        f"rank.per_label={k_run}",
    ]


def stored_main(args) -> int:
    """--variants / --report: run the given variants on one work folder, keep each one's patches and
    typicality in OUT/results/, and print the table of every kept variant."""
    if not args.out:
        raise SystemExit("--variants and --report need --out (the work folder the variants share)")
    work = Path(args.out)
    kept = work / "results"
    kept.mkdir(parents=True, exist_ok=True)
    if (work / "dataset").exists():
        truth = pd.read_parquet(work / "truth.parquet")
    else:
        truth = write_dataset(work / "dataset", args.per_label, args.size, args.seed)
        truth.to_parquet(work / "truth.parquet")
    base = [
        f"train.steps={args.steps}",
        "rank.elements=4",
        "runtime.progress=false",
        "runtime.threads=1",
        *args.overrides,
    ]
    for spec in args.variants or []:
        name, extra = parse_variant(spec, args.top_k)
        t0 = time.perf_counter()
        r = run_variant(work / "dataset", work / "run", base, extra)
        slug = name.replace(" ", "_").replace("=", "")
        r["patches"].to_parquet(kept / f"{slug}.patches.parquet")
        r["typicality"].to_parquet(kept / f"{slug}.typicality.parquet")
        meta = {"name": name, "score_s": r["score_s"], "wall_s": r["wall_s"], "k": r["k"], "spec": spec}
        pd.DataFrame([meta]).to_json(kept / f"{slug}.json", orient="records")
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s (score {r['score_s']:.1f} s)", flush=True)
    results = {}
    for path in sorted(kept.glob("*.json")):
        meta = pd.read_json(path, orient="records").iloc[0].to_dict()
        slug = path.name.removesuffix(".json")
        results[meta["name"]] = {
            **meta,
            "patches": pd.read_parquet(kept / f"{slug}.patches.parquet"),
            "typicality": pd.read_parquet(kept / f"{slug}.typicality.parquet"),
        }
    n = args.draws
    if f"plain N={n}" not in results or f"plain N={4 * n}" not in results:
        print(f"kept: {sorted(results)}; the table needs plain N={n} and plain N={4 * n}")
        return 0
    ks = args.compare_k or [args.top_k]
    plain_passes = 2 * results[f"plain N={n}"]["typicality"]["draws"].sum()
    refs = {k: top_k(results[f"plain N={4 * n}"]["patches"], k) for k in ks}
    head = "".join(f"{'overlap@' + str(k):>12}" for k in ks)
    print(
        f"{'variant':<34}{'passes':>8}{'/image':>8}{'vs N':>6}{'point all':>10}{'point topK':>11}"
        f"{'purity min':>11}{'purity mean':>12}{head}{'score s':>9}"
    )
    order = sorted(results, key=lambda v: (not v.startswith("plain"), -results[v]["typicality"]["draws"].sum(), v))
    for name in order:
        r = results[name]
        passes = 2 * int(r["typicality"]["draws"].sum())
        rep = localisation_report(r["patches"], truth)
        mine = top_k(r["patches"], int(r["k"]))
        in_top = {i for s in mine.values() for (i, *_) in s}
        rep_top = localisation_report(r["patches"][r["patches"]["image_id"].isin(in_top)], truth)
        overlaps = ""
        for k in ks:
            sel = top_k(r["patches"], k)
            overlaps += f"{np.mean([len(sel.get(lab, set()) & refs[k][lab]) / max(1, len(refs[k][lab])) for lab in refs[k]]):>12.3f}"
        purity = float(np.mean(list(rep["top_element_purity"].values()))) if rep["top_element_purity"] else np.nan
        print(
            f"{name:<34}{passes:>8}{passes / len(r['typicality']):>8.1f}{passes / plain_passes:>6.2f}"
            f"{rep['rank0_centre']:>10.3f}{rep_top['rank0_centre']:>11.3f}{rep['min_top_element_purity']:>11.3f}"
            f"{purity:>12.3f}{overlaps}{r['score_s']:>9.1f}"
        )
        counts = dict(zip(*np.unique(r["typicality"]["draws"], return_counts=True)))
        print(f"{'':<34}draws per image: { ({int(a): int(b) for a, b in counts.items()}) }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
