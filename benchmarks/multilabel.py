"""Multi-label images mined per label (issue 18): does each label's mining find its own motif, or
the motif of the label it shares the image with?

Builds the ground-truth motif set with one or two label motifs per image
(`gcmodels.data.synthetic.multilabel_motif_dataset`: photo backgrounds, each label's own shape and
colour, the white ring shared by every image; every pair of labels in the same number of images,
each label's motif in --per-label images, --pair-share of the images with two motifs), writes it as
a user would give it (IMAGES/*.png, labels.csv `filename,label` with an image's labels joined by
`|`, boxes.csv `filename,label,x0,y0,x1,y1` with one row per label motif), runs the whole flow (the
defaults plus any --set), and prints, per label and pooled over every (image, label) pair:

- rank-0 pointing: the image's rank-0 patch under label L contains the centre of L's motif box
  (split by images with one motif and with two);
- on the other motif: the share of those rank-0 patches, on images with two motifs, that contain
  instead the centre of the image's OTHER motif (the co-occurring label: the failure mode of
  multi-label mining), and the share on the shared ring;
- top-element purity: the share of L's top element's patches that contain L's motif centre (and
  the share on the other motif);
- `gcmine evaluate` (the flow behind it, `evaluate_run`) with boxes.csv: AUC-PR (the paper's
  thresholds), AP and pointing of the typicality maps per label; then the same maps against the
  OTHER motif's box of two-motif images (is the map's maximum on the co-occurring label's motif?).
  The run root ends with the evaluation against the true boxes (evaluation.parquet, report).

--single is the control: the same images, each labelled with ONE of its labels (a two-motif image
keeps one of its two: the two labels of a pair take turns, so that every label keeps as many images,
to one), so the other motif is an unlabelled object of another label; it runs on a gcmine without
multi-label support. Without --single the run needs multi-label images (the setting
`data.label_separator`): on a gcmine without it the script stops before any work.

    .venv/bin/python benchmarks/multilabel.py                       # 4 labels x 100 images, 64x64, half pairs
    .venv/bin/python benchmarks/multilabel.py --single              # the single-label control on the same images
    .venv/bin/python benchmarks/multilabel.py --pair-share 1        # every image carries two motifs
    .venv/bin/python benchmarks/multilabel.py --single --per-label 12 --set train.steps=40 --set score.draws=4

Targets (as the demo's, RESULTS 4, on the multi-label set): rank-0 pointing >= 0.90 per label, on
two-motif images too; rank-0 on the other motif well under the pointing (<= 0.10); top-element purity
>= 0.90 for every label.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np
import pandas as pd

from gcmine.flows.config import load_settings
from gcmodels.data.images import encode_png
from gcmodels.data.synthetic import multilabel_motif_dataset

SEPARATOR = "|"  # data.label_separator's default
ALL = "(all)"
LABELS = ("circle", "cross", "triangle", "square")
BOX = ["x0", "y0", "x1", "y1"]


def write_dataset(
    root: Path, per_label: int, size: int, pair_share: float, seed: int, single: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """root/images/NNNNN.png, root/labels.csv (`filename,label`: the image's labels joined by `|`,
    or with `single` one of them) and root/boxes.csv (one row per labelled motif).

    Returns (motifs, images): every motif of every image (`filename, label, x0, y0, x1, y1`,
    labelled or not) and per image `filename, motifs` (its motif labels joined), `given` (what
    labels.csv gives it) and its ring's box `dx0, dy0, dx1, dy1`."""
    items = multilabel_motif_dataset(n_per_label=per_label, size=size, labels=LABELS, pair_share=pair_share, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    motifs, images = [], []
    pairs_of = Counter(item.labels for item in items)
    seen: dict[tuple[str, ...], int] = {}  # --single: two-motif images of each pair so far
    for i, item in enumerate(items):
        name = f"{i:05d}.png"
        (root / "images" / name).write_bytes(encode_png(item.image))
        given = item.labels
        if single and len(item.labels) > 1:
            given = (_kept_label(item.labels, seen.get(item.labels, 0), pairs_of[item.labels]),)
            seen[item.labels] = seen.get(item.labels, 0) + 1
        for label, box in item.boxes.items():
            motifs.append({"filename": name, "label": label, **dict(zip(BOX, box))})
        dx0, dy0, dx1, dy1 = item.distractor_box
        images.append(
            {
                "filename": name,
                "motifs": SEPARATOR.join(item.labels),
                "given": SEPARATOR.join(given),
                "dx0": dx0,
                "dy0": dy0,
                "dx1": dx1,
                "dy1": dy1,
            }
        )
    motifs_df, images_df = pd.DataFrame(motifs), pd.DataFrame(images)
    images_df[["filename", "given"]].rename(columns={"given": "label"}).to_csv(root / "labels.csv", index=False)
    given_pairs = images_df[["filename", "given"]].assign(label=images_df["given"].str.split(SEPARATOR, regex=False))
    labelled = given_pairs.explode("label")[["filename", "label"]]
    labelled.merge(motifs_df, on=["filename", "label"], how="inner").to_csv(root / "boxes.csv", index=False)
    return motifs_df, images_df


def _kept_label(pair: tuple[str, ...], j: int, k: int) -> str:
    """--single: the label the j-th of the k images of a pair keeps. The two take turns; when k is
    odd the last image goes by a balanced round robin over LABELS (label i keeps it against the
    next (L - 1) // 2 labels in circular order, and against the opposite one when L is even and it
    comes first), so every label keeps the same number of images, to one."""
    if j < k - k % 2:
        return pair[j % 2]
    a, b = (LABELS.index(label) for label in pair)
    d = (b - a) % len(LABELS)
    first = 1 <= d <= (len(LABELS) - 1) // 2 or (len(LABELS) % 2 == 0 and d == len(LABELS) // 2 and a < b)
    return pair[0] if first else pair[1]


def other_motif_boxes(motifs: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """For every labelled (image, L) of a two-motif image, the box of the image's other motif,
    under L: the boxes file that asks whether L's map points at the co-occurring motif."""
    given = images[["filename", "given"]].assign(label=images["given"].str.split(SEPARATOR, regex=False))
    pairs = given.explode("label")[["filename", "label"]]
    other = pairs.merge(motifs, on="filename", suffixes=("", "_motif"))
    other = other[other["label"] != other["label_motif"]]
    return other[["filename", "label", *BOX]].reset_index(drop=True)


def _contains(p: pd.DataFrame, prefix: str) -> pd.Series:
    """Whether each patch box (x0..y1) contains the centre of the box in columns prefix+x0..y1."""
    cx = (p[prefix + "x0"] + p[prefix + "x1"]) / 2.0
    cy = (p[prefix + "y0"] + p[prefix + "y1"]) / 2.0
    inside = (p["x0"] <= cx) & (cx < p["x1"]) & (p["y0"] <= cy) & (cy < p["y1"])
    return inside.fillna(False).astype(bool)


def score_patches(patches: pd.DataFrame, motifs: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per label and pooled (`(all)`, micro-averaged over (image, label) pairs and top-element
    patches) the localisation of the mined patches.

    patches: `patches.parquet` with a `filename` column added (image_id -> file name of the
    manifest); one set of patches per (image, conditioning label). motifs, images: as
    `write_dataset` returns them.
    Columns: `pairs` (image, label) with a rank-0 patch, `pointing` (its rank-0 patch contains
    the centre of the label's motif), `pointing_single` / `pointing_two` (the same on one-motif and
    two-motif images), `two` (how many two-motif images), `on_other` (two-motif images whose rank-0
    patch contains the other motif's centre), `on_ring` (the ring's centre), `top_size`
    (patches of the label's top element), `top_purity` (share containing the label's motif centre
    in their image), `top_on_other` (the other motif's)."""
    own = motifs.rename(columns={c: "m" + c for c in BOX})
    other = motifs.rename(columns={"label": "other", **{c: "o" + c for c in BOX}})
    ring = images[["filename", "motifs", "dx0", "dy0", "dx1", "dy1"]].rename(
        columns={"dx0": "rx0", "dy0": "ry0", "dx1": "rx1", "dy1": "ry1"}
    )

    def hits(p: pd.DataFrame) -> pd.DataFrame:
        keys = ["filename", "label", "rank"]
        p = p.merge(own, on=["filename", "label"], how="left").merge(ring, on="filename", how="left")
        if p["mx0"].isna().any():
            bad = p.loc[p["mx0"].isna(), ["filename", "label"]].drop_duplicates().head(3).to_dict("records")
            raise ValueError(f"patches mined under a label whose motif the image does not show, e.g. {bad}")
        p = p.assign(
            own=_contains(p, "m"), ring=_contains(p, "r"), two=p["motifs"].str.contains(SEPARATOR, regex=False)
        )
        o = p[keys + BOX].merge(other, on="filename")
        o = o[o["other"] != o["label"]]
        on_other = o.assign(hit=_contains(o, "o")).groupby(keys)["hit"].any()
        p = p.merge(on_other.rename("on_other").reset_index(), on=keys, how="left")
        return p.assign(on_other=p["on_other"].fillna(False).astype(bool))

    patches = patches[["filename", "label", "rank", "element", *BOX]]
    r0 = hits(patches[patches["rank"] == 0].drop_duplicates(["filename", "label"]))
    top = hits(patches[patches["element"] == 0])
    rows = []
    for label in [*sorted(r0["label"].unique()), ALL]:
        r = r0 if label == ALL else r0[r0["label"] == label]
        t = top if label == ALL else top[top["label"] == label]
        pair = r[r["two"]]
        rows.append(
            {
                "label": label,
                "pairs": len(r),
                "pointing": r["own"].mean(),
                "pointing_single": r.loc[~r["two"], "own"].mean(),
                "two": len(pair),
                "pointing_two": pair["own"].mean(),
                "on_other": pair["on_other"].mean(),
                "on_ring": r["ring"].mean(),
                "top_size": len(t),
                "top_purity": t["own"].mean() if len(t) else np.nan,
                "top_on_other": t["on_other"].mean() if len(t) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def print_patch_table(table: pd.DataFrame) -> None:
    print(
        f"{'label':<10}{'pairs':>6}{'rank-0 pointing':>16}{'1 motif':>9}{'2 motifs':>10}{'(n)':>6}"
        f"{'on other':>10}{'on ring':>9}{'top purity':>12}{'top on other':>14}{'(n)':>6}"
    )
    for r in table.itertuples():
        print(
            f"{r.label:<10}{r.pairs:>6}{r.pointing:>16.3f}{r.pointing_single:>9.3f}{r.pointing_two:>10.3f}{r.two:>6}"
            f"{r.on_other:>10.3f}{r.on_ring:>9.3f}{r.top_purity:>12.3f}{r.top_on_other:>14.3f}{r.top_size:>6}"
        )
    print(
        "(rank-0 pointing: the rank-0 patch under the label contains its motif's centre; 1 motif / 2 motifs: on the "
        "images with one / two motifs; on other: the rank-0 patch contains the OTHER motif's centre instead, on "
        "two-motif images; on ring: the shared distractor's; top purity / top on other: the same for the patches of "
        "the label's top element)"
    )


def print_evaluation(result: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"{'label':<10}{'model':<11}{'pairs':>6}{'AUC-PR':>9}{'AP':>8}{'pointing':>10}{'inside':>11}{'outside':>11}")
    for r in result["summary"]:
        print(
            f"{r['label']!s:<10}{r['model']:<11}{r['pairs']:>6}{r['aucpr_paper']:>9.4f}{r['ap']:>8.4f}"
            f"{r['pointing']:>10.3f}{r['inside']:>11.3g}{r['outside']:>11.3g}"
        )
    skipped = result.get("skipped_by_reason") or {}
    print(
        f"evaluated {result['evaluated']} maps of {result['boxes']} box rows"
        + "".join(f"; skipped {n}: {why}" for why, n in skipped.items())
    )


def multilabel_supported() -> bool:
    """Whether this gcmine reads several labels per image (the setting data.label_separator)."""
    from gcmodels.config import DataConfig

    return "label_separator" in DataConfig.model_fields


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=100, help="images showing each label's motif (4 labels)")
    ap.add_argument("--size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--pair-share", type=float, default=0.5, help="share of the images with two motifs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the dataset")
    ap.add_argument("--single", action="store_true", help="the control: one label per image (one of its motifs')")
    ap.add_argument("--out", help="work folder (default: a temporary folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    settings = load_settings(None, args.overrides)
    if not args.single and not multilabel_supported():
        print(
            "multilabel.py: this gcmine reads one label per image (no setting data.label_separator): "
            "run the control with --single, or the benchmark on a gcmine with multi-label images",
            file=sys.stderr,
        )
        return 2

    from gcmine.flows.evaluate import evaluate_run
    from gcmine.flows.pipeline import run_pipeline
    from gcmine.tasks.infra.artifacts import MANIFEST, PATCHES
    from gcmine.tasks.infra.storage import RunStore

    work = Path(args.out or tempfile.mkdtemp(prefix="gcmine-multilabel-"))
    data = work / "dataset"
    motifs, images = write_dataset(data, args.per_label, args.size, args.pair_share, args.seed, args.single)
    two = int(images["motifs"].str.contains(SEPARATOR, regex=False).sum())
    print(
        f"{'single-label control' if args.single else 'multi-label'}: {len(images)} images of {args.size}x{args.size} "
        f"({two} with two motifs, {len(images) - two} with one), {len(LABELS)} labels x {args.per_label} images, "
        f"seed {args.seed}; {len(pd.read_csv(data / 'boxes.csv'))} labelled motifs; overrides: "
        f"{args.overrides or 'none'}",
        flush=True,
    )

    run = work / "run"
    start = time.perf_counter()
    result = run_pipeline(str(data / "images"), str(run), str(data / "labels.csv"), settings)
    wall = time.perf_counter() - start
    store = RunStore(str(run))
    manifest = store.read_parquet(MANIFEST)
    if (manifest["status"] != "ok").any():
        raise RuntimeError(f"ingest rejected {int((manifest['status'] != 'ok').sum())} generated image(s)")
    patches = store.read_parquet(PATCHES).merge(manifest[["image_id", "filename"]], on="image_id", how="left")
    unknown = sorted(set(patches["label"]) - set(LABELS))
    if unknown:
        raise RuntimeError(f"the run mined labels {unknown}: it did not split the images' labels on {SEPARATOR!r}")

    table = score_patches(patches, motifs, images)
    print("\n## mined patches")
    print_patch_table(table)

    other_csv = data / "other_boxes.csv"
    other_motif_boxes(motifs, images).to_csv(other_csv, index=False)
    # evaluated first, so that the run root ends with the evaluation against the true boxes
    confusion = evaluate_run(out=str(run), boxes=str(other_csv)) if len(pd.read_csv(other_csv)) else None
    truth = evaluate_run(out=str(run), boxes=str(data / "boxes.csv"))
    print_evaluation(truth, "## typicality maps against each label's motif box (gcmine evaluate RUN --boxes boxes.csv)")
    if confusion is not None:
        print_evaluation(
            confusion,
            "## the same maps against the OTHER motif's box, two-motif images (pointing: the map's maximum on the "
            "co-occurring motif)",
        )

    stages = result["stages"]
    timing = ", ".join(f"{k} {s['seconds']:.1f}" for k, s in stages.items() if "seconds" in s)
    print(f"\nseconds: flow wall {wall:.1f} (then two evaluations and their reports); stages: {timing}")
    print(f"work folder: {work}")
    pooled = table[table["label"] == ALL].iloc[0]
    per_label = table[table["label"] != ALL]
    ok = (
        per_label["pointing"].min() >= 0.9
        and (two == 0 or pooled["on_other"] <= 0.1)
        and per_label["top_purity"].min() >= 0.9
    )
    print("RESULT:", "targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
