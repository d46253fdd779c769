"""Ground-truth evaluation of the whole pipeline at the default configuration.

Builds the motif dataset (photographic backgrounds shared by all labels, a label-specific motif
of about a fifth of the image side at a random place, a distractor shape in every label), runs
the flow with the defaults (plus any --set), and prints how well the mined patches find the
motifs, with per-stage timings.

    .venv/bin/python benchmarks/ground_truth.py                   # 4 labels x 100 images, 64x64
    .venv/bin/python benchmarks/ground_truth.py --per-label 125   # 500 images
Targets (issue 2): rank-0 patch contains the motif centre in >= 90% of images; the top element
of every label is >= 90% motif patches; 500 images end to end in <= 20 min on 2 CPU cores.
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

import pandas as pd

from gcmine.flows.config import load_settings
from gcmodels.data.images import encode_png, image_id
from gcmodels.data.synthetic import motif_dataset
from gcmodels.mining.evaluation import localisation_report


def write_label_folders(root: Path, items) -> list[str]:
    """Each item's image as a PNG under root/<its label>/<index>.png (the folder-per-label layout
    gcmine reads); returns the images' content ids, in the order of `items`."""
    ids = []
    for i, item in enumerate(items):
        data = encode_png(item.image)
        path = root / item.label / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        ids.append(image_id(data))
    return ids


def write_dataset(root: Path, per_label: int, size: int, seed: int) -> pd.DataFrame:
    items = motif_dataset(n_per_label=per_label, size=size, seed=seed)
    rows = []
    for iid, item in zip(write_label_folders(root, items), items):
        x0, y0, x1, y1 = item.box
        dx0, dy0, dx1, dy1 = item.distractor_box
        rows.append(
            {"image_id": iid, "label": item.label, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
            | {"dx0": dx0, "dy0": dy0, "dx1": dx1, "dy1": dy1}  # the shared ring
        )
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=100)
    ap.add_argument("--size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="run folder (default: a temporary folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    settings = load_settings(None, args.overrides)

    from gcmine.flows.pipeline import run_pipeline
    from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES
    from gcmine.tasks.infra.storage import RunStore

    work = Path(args.out or tempfile.mkdtemp(prefix="gcmine-gt-"))
    truth = write_dataset(work / "dataset", args.per_label, args.size, args.seed)
    start = time.perf_counter()
    result = run_pipeline(str(work / "dataset"), str(work / "run"), None, settings)
    wall = time.perf_counter() - start
    store = RunStore(str(work / "run"))
    rep = localisation_report(store.read_parquet(PATCHES), truth, elements=store.read_parquet(ELEMENTS))

    print(
        f"\nground-truth benchmark: {len(truth)} images of {args.size}x{args.size}, "
        f"{truth['label'].nunique()} labels, settings overrides: {args.overrides or 'none'}"
    )
    print(f"{'metric':<44}{'value':>10}{'target':>10}")
    print(f"{'rank-0 patch contains motif centre':<44}{rep['rank0_centre']:>10.3f}{'>= 0.90':>10}")
    print(f"{'rank-0 patch overlaps motif':<44}{rep['rank0_overlap']:>10.3f}")
    for label, purity in rep["top_element_purity"].items():
        name = f"top element purity [{label}] (n={rep['top_element_size'][label]})"
        print(f"{name:<44}{purity:>10.3f}{'>= 0.90':>10}")
    print(f"{'rank-0 patch on the shared ring':<44}{rep['rank0_distractor']:>10.3f}")
    print(f"{'first 4 elements: patches on the shared ring':<44}{rep['first_elements_distractor']:>10.3f}")
    specific = rep.get("first_specific_elements_distractor", float("nan"))
    print(f"{'  the same, label-specific elements only':<44}{specific:>10.3f}")
    print(f"\n{'stage':<12}{'seconds':>10}")
    stages = result["stages"]
    for name, s in stages.items():
        print(f"{name:<12}{s['seconds']:>10.1f}")
    compute = sum(s["seconds"] for s in stages.values())
    print(f"{'wall':<12}{wall:>10.1f}")
    print(
        f"{'overhead':<12}{wall - compute:>10.1f}  (flow wall time minus stage compute: Prefect start-up, orchestration)"
    )
    print(f"{'overhead %':<12}{100 * (wall - compute) / wall:>10.1f}  (target for a 500-image run: < 10)")
    print(f"run folder: {work}")
    ok = rep["rank0_centre"] >= 0.9 and rep["min_top_element_purity"] >= 0.9
    print("RESULT:", "targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
