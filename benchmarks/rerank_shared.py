"""Elements shared with other labels, measured on stored runs (issue 21, RESULTS.md 12j).

Re-ranks the elements of a finished run root the way `rank.shared_elements=last` does, without
running the flow again: the label-specificity of each kept candidate patch (`label_specificity`
on the features its rank stage stored, over every label's `rank.per_label` best), each
element's median, `shared` when below half-way from the label's chance to 1, the label-specific
elements first. The clusters are the stored ones (the elements stage clusters the same features
with the same seed whatever the order), so this is what the elements stage of today's code gives
on that run. Prints the ground-truth measures before (the paper's order) and after:

    .venv/bin/python benchmarks/rerank_shared.py motif RUN --per-label 125 --seed 0   # ground_truth.py's set
    .venv/bin/python benchmarks/rerank_shared.py mixed RUN --seed 1                   # mixed_shapes.py's
    .venv/bin/python benchmarks/rerank_shared.py parts RUN --layout house --seed 1    # parts.py's

RUN is the run root (`--out W` of those scripts: W/run, W/run-crops).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ground_truth import write_label_folders

from gcmodels.data.synthetic import mixed_motif_dataset, motif_dataset
from gcmodels.mining.elements import element_order, label_specificity, shared_elements
from gcmodels.mining.evaluation import localisation_report


def motif_truth(items: list, ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"image_id": i, "label": it.label, **dict(zip(("x0", "y0", "x1", "y1"), it.box))}
            | dict(zip(("dx0", "dy0", "dx1", "dy1"), it.distractor_box))
            for i, it in zip(ids, items)
        ]
    )


def current_candidates(root: str) -> list[Path]:
    """The candidate tables of the run's last rank stage: per shard the newest
    `patch_candidates/part-<shard>-<key>.parquet` (a run root re-ranked with other settings keeps
    the older tables beside it, whose rows would otherwise be counted twice)."""
    newest: dict[str, Path] = {}
    for f in Path(root, "patch_candidates").glob("part-*.parquet"):
        shard = f.name.rsplit("-", 1)[0]
        if shard not in newest or f.stat().st_mtime > newest[shard].stat().st_mtime:
            newest[shard] = f
    return sorted(newest.values())


def reranked(root: str, per_label: int, neighbours: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(patches, elements) of run root `root` with its elements re-ranked label-specific first."""
    from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES
    from gcmine.tasks.infra.storage import RunStore
    from gcmine.tasks.rank import _top_per_label

    store = RunStore(root)
    patches, elements = store.read_parquet(PATCHES), store.read_parquet(ELEMENTS)
    parts = current_candidates(root)
    cand = pd.concat(
        [pd.read_parquet(p, columns=["image_id", "rank", "label", "typicality", "feature"]) for p in parts]
    )
    cand = cand[cand["feature"].map(len) > 0].reset_index(drop=True)
    best = cand.loc[_top_per_label(cand, per_label)].reset_index(drop=True)
    best["specificity"] = label_specificity(np.stack(best["feature"].to_numpy()), best["label"].to_numpy(), neighbours)
    best = best.merge(patches[["image_id", "rank", "element"]], on=["image_id", "rank"])
    rows = []
    for label, g in best.groupby("label"):
        chance = len(g) / len(best)
        spec = g[g["element"] >= 0].groupby("element")["specificity"].median()
        el = elements[elements["label"] == label].set_index("element")
        el = el.assign(specificity=spec.reindex(el.index))
        el = el.assign(shared=shared_elements(el["specificity"].to_numpy(), chance))
        order = el.iloc[element_order(el["score"].to_numpy(), el["size"].to_numpy(), el["shared"].to_numpy())]
        rows.append(order.reset_index().assign(new=np.arange(len(order))))
    table = pd.concat(rows, ignore_index=True)
    remap = {(r.label, r.element): r.new for r in table.itertuples()}
    new_patches = patches.assign(
        element=[remap.get((lab, e), -1) if e >= 0 else -1 for lab, e in zip(patches["label"], patches["element"])]
    )
    new_elements = table.assign(element=table["new"], rank=table["new"]).drop(columns=["new"])
    return new_patches, new_elements


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["motif", "mixed", "parts"])
    ap.add_argument("run", help="the run root")
    ap.add_argument("--per-label", type=int, help="images per label of the set (default: the script's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", default="car", help="parts: car or house")
    ap.add_argument("--rank-per-label", type=int, default=1000, help="the run's rank.per_label")
    ap.add_argument("--neighbours", type=int, default=10, help="rank.specificity_neighbours")
    args = ap.parse_args()

    from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES
    from gcmine.tasks.infra.storage import RunStore

    tmp = Path(tempfile.mkdtemp(prefix="gcmine-rerank-"))
    store = RunStore(args.run)
    before = (store.read_parquet(PATCHES), store.read_parquet(ELEMENTS))
    after = reranked(args.run, args.rank_per_label, args.neighbours)
    if args.kind == "parts":
        import parts

        ns = argparse.Namespace(
            per_label=args.per_label or 60, size=96, layout=args.layout, p_own=0.8, p_cross=0.15, seed=args.seed
        )
        truth = parts.write_dataset(tmp, ns)
        kinds = [s.name for s in parts.PARTS_LAYOUTS[args.layout].slots]
        for name, (p, e) in (
            ("paper order", (before[0], before[1].drop(columns=["shared"], errors="ignore"))),
            ("shared last", after),
        ):
            rep = parts.evaluate(p, e, truth, kinds, 4)
            print(
                f"{name}: pairs {rep['pairs_found'] * rep['pairs']:.0f} / {rep['pairs']} (thin {rep['thin_found']:.3f}); "
                f"rank-0 on an own part {rep['pointing']:.3f}; ring among the first elements {rep['ring_first']} "
                f"(rank 0: {rep['ring_rank0']}); shared elements {int(after[1]['shared'].sum())}"
            )
        return 0
    if args.kind == "motif":
        items = motif_dataset(n_per_label=args.per_label or 100, size=64, seed=args.seed)
    else:
        items = mixed_motif_dataset(n_per_label=args.per_label or 50, seed=args.seed)
    truth = motif_truth(items, write_label_folders(tmp, items))
    for name, (p, e) in (("paper order", (before[0], None)), ("shared last", after)):
        rep = localisation_report(p, truth, elements=e)
        print(
            f"{name}: rank-0 {rep['rank0_centre']:.3f}; top-element purity min {rep['min_top_element_purity']:.3f} "
            f"({' '.join(f'{k}={v:.2f}' for k, v in rep['top_element_purity'].items())}); ring: rank-0 "
            f"{rep['rank0_distractor']:.3f}, first 4 elements {rep['first_elements_distractor']:.3f}"
            + (
                f" (label-specific ones {rep['first_specific_elements_distractor']:.3f}); shared elements "
                f"{int(e['shared'].sum())} of {len(e)}"
                if e is not None
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
