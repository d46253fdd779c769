"""Compare every Parquet output of two runs, or of one fixed dataset run by two code versions.

    # two existing run folders (e.g. the demo run by the old and the new code)
    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B

    # a fixed small dataset (motif images, 4 labels x 12, 32x32) run by the code of git revision
    # REV (exported with `git archive`) and by this checkout, the old code twice to show the flow
    # is deterministic; extra --set settings go to all runs
    .venv/bin/python benchmarks/compare_runs.py --against REV [--work DIR] [--repeat] [--set key=value ...]

Files are paired by their path under the run root with the content key of cached outputs
(`stages/clusters-<key>.parquet`, `maps/part-00000-<key>.parquet`: it changes with the code)
removed. Each pair is reported as identical bytes, the same table (equal schema and values, NaN
equal to NaN, different file bytes), or different: which columns, how many rows, the largest
numeric difference, and for integer columns whether the values are the same up to a renaming
(a bijection, as between two numberings of the same clusters). The wall-clock columns that
differ between any two runs (`WALL_CLOCK`: when an image was first seen, training seconds) are
compared apart and named. Exit status 1 when any table differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
#: columns that hold times, different in any two runs of the same code
WALL_CLOCK = {"manifest.parquet": ("first_seen",), "training.parquet": ("seconds",)}
_KEY = re.compile(r"-[0-9a-f]{16}(?=\.parquet$)")
# the fixed dataset's settings: a small, fast, complete run (every stage, elements included)
FIXED_SETTINGS = [
    "data.resolution=32",
    "model.latent_factor=1",  # pixel space: no autoencoder to train in this quick run
    "train.steps=40",
    "score.draws=2",
    "rank.feature_draws=1",
    "runtime.threads=1",
    "runtime.progress=false",
]


def parquet_files(root: Path) -> dict[str, Path]:
    """Every Parquet file under `root` by its key-free relative path (`.cache/` left out)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.parquet")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".cache/"):
            continue
        name = _KEY.sub("", rel)
        if name in out:
            raise SystemExit(f"{root}: two files map to {name} ({out[name].name}, {path.name}); use fresh run folders")
        out[name] = path
    return out


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """Values of a column as a numpy array, list columns flattened (+ their offsets)."""
    arr = column.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return np.asarray(arr.flatten().to_numpy(zero_copy_only=False)), np.asarray(arr.offsets)
    return np.asarray(arr.to_numpy(zero_copy_only=False)), None


def _renaming(a: np.ndarray, b: np.ndarray) -> bool:
    """True when b is a one-to-one renaming of a (same partition, other ids)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


def compare_tables(a: Path, b: Path, wall_clock: tuple[str, ...] = ()) -> str | None:
    """None when the tables are equal, else a description of the differences (`wall_clock`:
    columns whose differences are only named)."""
    if a.read_bytes() == b.read_bytes():
        return None
    ta, tb = pq.read_table(a), pq.read_table(b)
    clocks = [c for c in wall_clock if c in ta.column_names and c in tb.column_names]
    if clocks:
        ta, tb = ta.drop_columns(clocks), tb.drop_columns(clocks)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        return f"schemas differ: {ta.schema.names} / {tb.schema.names}"
    if ta.num_rows != tb.num_rows:
        return f"{ta.num_rows} vs {tb.num_rows} rows"
    notes = []
    for name in ta.column_names:
        va, offsets_a = _flat(ta[name])
        vb, offsets_b = _flat(tb[name])
        if offsets_a is not None and not np.array_equal(offsets_a, offsets_b):
            notes.append(f"{name}: list lengths differ")
            continue
        numeric = va.dtype.kind in "fiub" and vb.dtype.kind in "fiub"
        same = np.array_equal(va, vb, equal_nan=va.dtype.kind == "f") if numeric else va.tolist() == vb.tolist()
        if same:
            continue
        differ = va != vb
        if numeric and va.dtype.kind == "f":
            differ &= ~(np.isnan(va) & np.isnan(vb))
        n_diff = int(differ.sum())
        note = f"{name}: {n_diff} of {len(va)} values differ"
        if numeric and va.dtype.kind == "f":
            finite = np.isfinite(va) & np.isfinite(vb)
            if finite.any():
                note += f" (largest difference {np.abs(va[finite] - vb[finite]).max():.3g})"
        if numeric and va.dtype.kind in "iu" and _renaming(va, vb):
            note += " (the same partition under other ids)"
        notes.append(note)
    if notes:
        return "; ".join(notes)
    return (
        f"same table apart from the wall-clock column(s) {', '.join(clocks)}"
        if clocks
        else "same table, different file bytes"
    )


def compare_runs(run_a: Path, run_b: Path, names: tuple[str, str] = ("A", "B")) -> bool:
    """Print the comparison of every Parquet output; True when all are equal."""
    fa, fb = parquet_files(run_a), parquet_files(run_b)
    ok = True
    print(f"{names[0]}: {run_a}\n{names[1]}: {run_b}")
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            print(f"  {name:44s} only in {names[0] if name in fa else names[1]}")
            ok = False
            continue
        diff = compare_tables(fa[name], fb[name], WALL_CLOCK.get(name, ()))
        if diff is None:
            verdict = "identical bytes"
        elif diff.startswith("same table"):
            verdict = diff
        else:
            verdict, ok = f"DIFFERENT: {diff}", False
        print(f"  {name:44s} {verdict}")
    return ok


def write_fixed_dataset(folder: Path) -> Path:
    """The fixed test dataset: 4 labels x 12 motif images of 32x32 (seed 0), one folder per label."""
    sys.path.insert(0, str(REPO))
    from gcmodels.data.images import encode_png
    from gcmodels.data.synthetic import motif_dataset

    images = folder / "images"
    for i, item in enumerate(motif_dataset(n_per_label=12, size=32, seed=0)):
        path = images / item.label / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(item.image))
    return images


def _code_env(code: Path) -> tuple[dict[str, str], str]:
    """The environment that imports the code in `code` (not this checkout's installed packages),
    and the CLI module of that code.

    Since the layout of issue 17, `tasks/` and `flows/` are imported as `gcmine.tasks` and
    `gcmine.flows`, a mapping only the installed package knows: an exported tree gets a folder
    `_gcmine/gcmine/` linking to its `tasks/` and `flows/`, put first on the path. Older code
    imports `tasks` and `flows` from its top level. Which files are imported is checked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = "gcmine." if '"gcmine.flows"' in (code / "pyproject.toml").read_text() else ""
    env["PYTHONPATH"] = str(code)
    if prefix and code != REPO:
        shim = code / "_gcmine"
        if not shim.exists():
            (shim / "gcmine").mkdir(parents=True)
            for name in ("tasks", "flows"):
                (shim / "gcmine" / name).symlink_to(code / name, target_is_directory=True)
        env["PYTHONPATH"] = os.pathsep.join([str(shim), str(code)])
    module = f"{prefix}flows.cli"
    probe = f"import {module} as m, gcmodels, {prefix}tasks as t\nfor x in (m, gcmodels, t): print(x.__file__)"
    files = subprocess.run([sys.executable, "-c", probe], cwd=code, env=env, capture_output=True, text=True, check=True)
    for line in files.stdout.splitlines():
        if not Path(line).resolve().is_relative_to(code.resolve()):
            raise SystemExit(f"the run of {code} would import {line}: not the code to compare")
    return env, module


def run_flow(code: Path, images: Path, out: Path, settings: list[str]) -> None:
    """`gcmine run` with the code in `code` (its own Prefect home, one BLAS thread)."""
    home = out.parent / f"{out.name}-prefect"
    env, module = _code_env(code)
    env["PREFECT_HOME"] = str(home)
    argv = [sys.executable, "-m", module, "run", str(images), "--out", str(out)]
    for item in settings:
        argv += ["--set", item]
    print(f"running {code} -> {out}", flush=True)
    proc = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the run with {code} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="two run folders to compare")
    ap.add_argument("--against", metavar="REV", help="git revision to compare this checkout with on the fixed dataset")
    ap.add_argument("--work", help="folder for the code export, dataset and runs (default: a temporary folder)")
    ap.add_argument("--repeat", action="store_true", help="run the old code twice (shows the flow is deterministic)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.against is None:
        if len(args.runs) != 2:
            ap.error("give two run folders, or --against REV")
        return 0 if compare_runs(Path(args.runs[0]), Path(args.runs[1])) else 1

    work = Path(args.work or tempfile.mkdtemp(prefix="gcmine-compare-"))
    old_code = work / f"code-{args.against}"
    if not old_code.exists():
        old_code.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", args.against], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_code)], input=archive, check=True)
    images = write_fixed_dataset(work / "dataset")
    settings = FIXED_SETTINGS + args.overrides
    runs = {"old": work / "run-old", "new": work / "run-new"}
    if args.repeat:
        runs["old-again"] = work / "run-old-again"
    for name, out in runs.items():
        if not out.exists():
            run_flow(REPO if name == "new" else old_code, images, out, settings)
    ok = True
    if args.repeat:
        print("\n== the old code, run twice ==")
        ok &= compare_runs(runs["old"], runs["old-again"], ("old", "old again"))
    print(f"\n== {args.against} vs this checkout ==")
    ok &= compare_runs(runs["old"], runs["new"], ("old", "new"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
