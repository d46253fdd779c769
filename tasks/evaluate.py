"""evaluate: a finished run's typicality maps against the user's boxes (`gcmine evaluate`).

For every (image, label) that has boxes, the map of the image under that label is upsampled
bilinearly to the original image (as rank upsamples maps to the working image) and compared
with the union of its boxes: the paper's AUC-PR, average precision, the pointing game, and the
mean typicality inside vs outside (gcmodels/mining/evaluation.py). No model work: the maps are read
from the run root. Every row of the boxes file is accounted for: a box that names an unknown
image or label, lies outside its image or has unusable coordinates is reported with its
reason in `evaluation.parquet`, never dropped in silence.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections import defaultdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from prefect import task

from gcmine.tasks.infra.artifacts import (
    EVALUATION,
    EVALUATION_SUMMARY,
    MANIFEST,
    RUN_JSON,
    artifact_key,
    dataset_name,
    stopwatch,
    unpack_map_rows,
)
from gcmine.tasks.infra.errors import InputError, RunRootBusy
from gcmine.tasks.infra.lease import root_state
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import clean_label, read_table
from gcmodels.mining.evaluation import boxes_mask, localisation_scores

__all__ = [
    "BOX_COLUMNS",
    "EVALUATION_COLUMNS",
    "METRICS",
    "evaluate",
    "maps_key",
    "match_boxes",
    "read_boxes",
    "recorded_maps",
    "summarise",
]

BOX_COLUMNS = ["filename", "label", "x0", "y0", "x1", "y1"]
METRICS = ["aucpr_paper", "ap", "pointing", "inside", "outside"]
EVALUATION_COLUMNS = [
    "image_id",
    "filename",
    "label",
    "model",
    "status",
    "reason",
    "boxes",
    "boxes_dropped",
    "width",
    "height",
    *METRICS,
]
ALL = "(all)"  # the summary row that pools every evaluated (image, label) pair (micro-average)


def read_boxes(uri: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The boxes file (CSV or Parquet, local or s3://): `filename, label, x0, y0, x1, y1` in
    original pixels, one row per box. Returns those columns plus `row` (the file's row number,
    header = 1) and `problem` (None, or why the row cannot be used: an empty file name or
    label, a coordinate that is not a number). A missing column or an empty file is an
    `InputError` naming the file."""
    df = read_table(uri, "boxes", storage_options)
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"boxes file {uri} lacks column(s) {missing}; it has {list(df.columns)} (need {','.join(BOX_COLUMNS)})"
        )
    if len(df) == 0:
        raise InputError(f"boxes file {uri} has no rows")
    df = df.reset_index(drop=True)
    out = pd.DataFrame(
        {
            "row": np.arange(len(df)) + 2,
            "filename": [
                "" if v is None or (isinstance(v, float) and v != v) else str(v).strip() for v in df["filename"]
            ],
            "label": [clean_label(v) for v in df["label"]],
        }
    )
    problem: list[str | None] = [None] * len(df)
    for c in ("x0", "y0", "x1", "y1"):
        values = pd.to_numeric(df[c], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        for i in np.flatnonzero(bad):
            problem[i] = problem[i] or f"column {c!r} is not a number ({df[c].iloc[i]!r})"
        out[c] = values
    for i, (name, label) in enumerate(zip(out["filename"], out["label"])):
        if not name:
            problem[i] = "empty file name"
        elif label is None:
            problem[i] = problem[i] or "empty label"
    out["problem"] = problem
    return out


def _pixel_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int
) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """A box in whole original pixels (x0, y0 floored, x1, y1 ceiled), clipped to the image;
    None and the reason when nothing of it is inside the image or it is empty."""
    if not (x1 > x0 and y1 > y0):
        return None, f"empty box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): needs x0 < x1 and y0 < y1"
    bx0, by0, bx1, by1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    cx0, cy0, cx1, cy1 = max(bx0, 0), max(by0, 0), min(bx1, width), min(by1, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return None, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the image ({width} x {height})"
    return (cx0, cy0, cx1, cy1), None


def match_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Attach each box row to an image of the run's manifest: `image_id`, `width`, `height`, and
    `problem` when it names no usable image. A box's file name matches an image whose source
    is that name, ends with it as a path relative to IMAGES, or - when unique among the run's
    images - whose base name it is; a name that fits several images is ambiguous."""
    boxes = boxes.copy()
    by_source: dict[str, list[int]] = defaultdict(list)
    by_base: dict[str, list[int]] = defaultdict(list)
    sources = manifest["source"].astype(str).tolist()
    for i, src in enumerate(sources):
        by_source[src].append(i)
        by_base[posixpath.basename(src.replace("\\", "/"))].append(i)
    image_id, width, height = [], [], []
    problem = [p if isinstance(p, str) else None for p in boxes["problem"]]
    for j, name in enumerate(boxes["filename"]):
        found: list[int] = []
        if name:
            clean = name.replace("\\", "/")
            while clean.startswith("./"):
                clean = clean[2:]
            found = by_source.get(name, [])
            if not found:
                suffix = "/" + clean
                found = [
                    i
                    for i in by_base.get(posixpath.basename(clean), [])
                    if sources[i].replace("\\", "/").endswith(suffix)
                ]
            if not found and "/" not in clean:
                found = by_base.get(clean, [])
        rows = manifest.iloc[found] if found else manifest.iloc[0:0]
        live = rows[rows["status"] == "ok"]
        if problem[j] is None:
            if rows.empty:
                problem[j] = "unknown image: no image of the run has this file name"
            elif len(live) > 1 and live["image_id"].nunique() > 1:
                problem[j] = (
                    f"ambiguous file name: it fits {len(live)} images of the run; give the path relative to IMAGES"
                )
            elif live.empty:
                problem[j] = f"image rejected at ingest ({rows['reason'].iloc[0]})"
        if problem[j] is None:
            image_id.append(live["image_id"].iloc[0])
            width.append(int(live["width"].iloc[0]))
            height.append(int(live["height"].iloc[0]))
        else:
            image_id.append(None)
            width.append(0)
            height.append(0)
    boxes["image_id"], boxes["width"], boxes["height"], boxes["problem"] = image_id, width, height, problem
    return boxes


def _map_index(store: RunStore, parts: list[str]) -> dict[tuple[str, str], tuple[str, int]]:
    """Which maps part and row hold the map of each (image_id, label) of the run."""
    index: dict[tuple[str, str], tuple[str, int]] = {}
    for part in parts:
        df = store.read_parquet(part, ["image_id", "label"])
        for row, key in enumerate(zip(df["image_id"], df["label"])):
            index[key] = (part, row)
    return index


def _upsample(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map (h, w) at model resolution -> (height, width) original pixels, bilinear (half-pixel
    centres, as rank upsamples maps to the working image)."""
    if m.shape == (height, width):
        return m
    t = torch.from_numpy(np.array(m, dtype=np.float32))[None, None]  # a writable copy
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


DIFFERENCE = "finetuned - base"  # the summary's model of the per-image differences (score.compare_base)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and label, and pooled over every pair (label `(all)`, the micro-average): the
    number of evaluated pairs and the mean of every measure. With both the fine-tuned and the
    base model (score.compare_base), also the model `finetuned - base`: the mean over the (image,
    label) pairs evaluated under both of the per-image difference of every measure."""
    ok = table[table["status"] == "ok"]
    groups = list(ok.groupby("model", sort=True))
    if {"finetuned", "base"} <= set(ok["model"]):
        keys = ["image_id", "label"]
        tuned = ok[ok["model"] == "finetuned"].drop_duplicates(keys).set_index(keys)[METRICS]
        base = ok[ok["model"] == "base"].drop_duplicates(keys).set_index(keys)[METRICS]
        diff = (tuned - base).dropna(how="all").reset_index()
        groups.append((DIFFERENCE, diff))
    rows = []
    for model, group in groups:
        for label, g in [*group.groupby("label", sort=True), (ALL, group)]:
            rows.append({"model": model, "label": label, "pairs": len(g), **{m: float(g[m].mean()) for m in METRICS}})
    return pd.DataFrame(rows, columns=["model", "label", "pairs", *METRICS])


def maps_key(parts: dict[str, list[str]]) -> str:
    """A short digest of the maps parts evaluated (per model, as `recorded_maps` gives them),
    kept in `evaluation_summary.parquet` (column `maps`): the report tells an evaluation of the
    current maps from one of an earlier run of the same root."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps({k: sorted(v) for k, v in sorted(parts.items())}).encode()).hexdigest()[:16]


def maps_kind_of(run_json: dict) -> str:
    """What a run's maps are (`stages.score.maps_kind`: "typicality", "label contrast (cycled)" or
    "(all)"); "typicality" for a run.json written before score.contrast existed."""
    return str(((run_json.get("stages") or {}).get("score") or {}).get("maps_kind", "typicality"))


def maps_of(run_json: dict) -> dict[str, list[str]]:
    """The maps parts a run's `run.json` (or the run info the report receives) records, per model;
    empty when it records none."""
    score = (run_json.get("stages") or {}).get("score") or {}
    if not score.get("maps"):
        return {}
    return {"finetuned": list(score["maps"]), **({"base": list(score["maps_base"])} if score.get("maps_base") else {})}


def finished_run_json(store: RunStore) -> dict:
    """The run's `run.json`; an InputError when there is none (not a finished gcmine run)."""
    if not store.exists(RUN_JSON):
        raise InputError(f"{store.uri(RUN_JSON)} does not exist: {store.root_uri} is not a finished gcmine run")
    return store.read_json(RUN_JSON)


def recorded_maps(store: RunStore, run_json: dict | None = None) -> dict[str, list[str]]:
    """The maps parts of the run's latest scoring, per model (`finetuned`; `base` with
    score.compare_base), as `run.json` (read from `store` unless given) records them."""
    maps = maps_of(finished_run_json(store) if run_json is None else run_json)
    if not maps:
        raise InputError(
            f"{store.uri(RUN_JSON)} records no typicality maps (a run made before gcmine evaluate existed, or one "
            "that did not finish scoring): rerun the same `gcmine run` into it; finished stages are reused"
        )
    return maps


@task(name="evaluate", task_run_name="evaluate")
def evaluate(out: str, boxes: str, storage_options: dict | None = None) -> dict:
    """Score the run's maps against the boxes of `boxes`; write `evaluation.parquet` (one row per
    (box file name, label) and model: `status` ok or skipped with its `reason`) and
    `evaluation_summary.parquet` (per label and pooled)."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        run_json = finished_run_json(store)
        parts = recorded_maps(store, run_json)
        kind = maps_kind_of(run_json)
        _require_idle(store)
        manifest = store.read_parquet(MANIFEST)
        found = match_boxes(read_boxes(boxes, storage_options), manifest)
        rows: list[dict] = []
        for model, model_parts in parts.items():
            index = _map_index(store, model_parts)
            labels = {lab for _, lab in index}
            pairs = _pairs(found, index, labels)
            loaded = _load_maps(store, [p["key"] for p in pairs if p["status"] == "ok"], index)
            for p in pairs:
                row = {
                    k: p[k]
                    for k in (
                        "image_id",
                        "filename",
                        "label",
                        "status",
                        "reason",
                        "boxes",
                        "boxes_dropped",
                        "width",
                        "height",
                    )
                }
                row["model"] = model
                row.update(dict.fromkeys(METRICS, float("nan")))
                if p["status"] == "ok":
                    m = _upsample(loaded[p["key"]], p["height"], p["width"])
                    try:
                        row.update(
                            localisation_scores(m, boxes_mask(np.asarray(p["pixel_boxes"]), p["height"], p["width"]))
                        )
                    except ValueError as err:  # a map holding NaN: reported, not fatal
                        row.update(status="skipped", reason=f"map not usable: {err}")
                rows.append(row)
        table = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
        summary = summarise(table).assign(maps=maps_key(parts))
        store.write_parquet(EVALUATION, table)
        store.write_parquet(EVALUATION_SUMMARY, summary)
    evaluated = int((table["status"] == "ok").sum())
    skipped = table[table["status"] != "ok"]
    log.info("evaluated %d (image, label, model) maps against %s; %d skipped", evaluated, boxes, len(skipped))
    records = summary.drop(columns="maps").astype(dict.fromkeys(METRICS, float)).round(6).to_dict(orient="records")
    _table_artifact(records, boxes, out, kind)
    return {
        "maps_kind": kind,
        "evaluated": evaluated,
        "skipped": len(skipped),
        "boxes": len(found),
        "summary": records,
        "skipped_by_reason": _reason_counts(skipped),
        "evaluation": store.uri(EVALUATION),
        "seconds": clock["seconds"],
    }


def check_evaluable(out: str, storage_options: dict | None = None) -> None:
    """What `evaluate` refuses, checked before the evaluation takes the run root's lease: not a
    finished run (no recorded maps), a run writing into it now, or one a run left mid-update."""
    store = RunStore(out, storage_options)
    recorded_maps(store)
    _require_idle(store)


def _own_flow_run() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:
        return None


def _require_idle(store: RunStore) -> None:
    """Refuse a run root a run is writing into now, or one a run left mid-update: its maps and
    manifest may belong to two runs. The lease and marker of this flow run itself (the
    evaluation flow holds the lease while it writes) are not another run's."""
    state = root_state(store)
    own = _own_flow_run()
    holder = (state.get("lease") or state.get("marker") or {}).get("flow_run_id")
    if own is not None and holder == own:
        return
    if state["state"] == "updating":
        raise RunRootBusy(f"{store.location} is being updated by {state['by']}: evaluate it once that run has finished")
    if state["state"] == "interrupted":
        raise RunRootBusy(
            f"{store.location} was left mid-update by {state['by']} (its tables may mix two runs): run the same "
            "`gcmine run` again to finish it, then evaluate"
        )


def _table_artifact(records: list[dict], boxes: str, out: str, kind: str) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        # NaN (no pixel outside a box covering the whole image) is not JSON: shown empty
        clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in records]
        create_table_artifact(
            clean,
            key=artifact_key(out, "evaluation"),
            description=f"{dataset_name(out)}: {kind} maps against the boxes of {boxes}",
        )
    except Exception as err:
        stage_logger().debug("Prefect artifact not created: %s", err)


def _reason_counts(skipped: pd.DataFrame) -> dict[str, int]:
    """Skipped pairs by the kind of their (first) reason: `unknown image`, `unknown label`, ..."""
    kinds = skipped["reason"].fillna("").map(lambda r: re.sub(r"^row \d+: ", "", r).split(":", 1)[0].split(" (", 1)[0])
    return {str(k): int(v) for k, v in kinds.value_counts().sort_index().items()}


def _pairs(found: pd.DataFrame, index: dict[tuple[str, str], tuple[str, int]], labels: set[str]) -> list[dict]:
    """Group the box rows by (file name, label): one pair each, `ok` with its usable boxes in
    whole original pixels, or `skipped` with the reason (every box row lands in exactly one)."""
    pairs = []
    for (name, label), group in found.groupby(["filename", found["label"].fillna("")], sort=True, dropna=False):
        first = group.iloc[0]
        base = {
            "image_id": first["image_id"],
            "filename": name,
            "label": label or None,
            "boxes": 0,
            "boxes_dropped": len(group),
            "width": int(first["width"]),
            "height": int(first["height"]),
            "pixel_boxes": [],
            "key": None,
            "status": "skipped",
        }
        problems = [f"row {r}: {p}" for r, p in zip(group["row"], group["problem"]) if isinstance(p, str)]
        if len(problems) == len(group):
            pairs.append({**base, "reason": _join_reasons(problems)})
            continue
        usable = group[[not isinstance(p, str) for p in group["problem"]]]
        image = usable["image_id"].iloc[0]
        if label not in labels:
            pairs.append({**base, "image_id": image, "reason": f"unknown label: the run has no map under {label!r}"})
            continue
        if (image, label) not in index:
            own = sorted(lab for img, lab in index if img == image)
            what = f"it was scored under {own}" if own else "it was not scored (no label)"
            pairs.append({**base, "image_id": image, "reason": f"no map of this image under {label!r}: {what}"})
            continue
        boxes, dropped = [], list(problems)
        for b in usable.itertuples():
            box, why = _pixel_box(b.x0, b.y0, b.x1, b.y1, int(b.width), int(b.height))
            if box is None:
                dropped.append(f"row {b.row}: {why}")
            else:
                boxes.append(box)
        if not boxes:
            pairs.append({**base, "image_id": image, "reason": _join_reasons(dropped)})
            continue
        pairs.append(
            {
                **base,
                "image_id": image,
                "boxes": len(boxes),
                "boxes_dropped": len(dropped),
                "pixel_boxes": boxes,
                "key": (image, label),
                "status": "ok",
                "reason": _join_reasons(dropped) if dropped else None,
            }
        )
    return pairs


def _join_reasons(reasons: list[str]) -> str:
    seen = list(dict.fromkeys(reasons))
    return "; ".join(seen[:3]) + (f"; and {len(seen) - 3} more" if len(seen) > 3 else "")


def _load_maps(
    store: RunStore, keys: list[tuple[str, str]], index: dict[tuple[str, str], tuple[str, int]]
) -> dict[tuple[str, str], np.ndarray]:
    """The maps of `keys`, reading each maps part once."""
    by_part: dict[str, list[int]] = defaultdict(list)
    for key in dict.fromkeys(keys):
        part, row = index[key]
        by_part[part].append(row)
    maps: dict[tuple[str, str], np.ndarray] = {}
    for part, wanted in by_part.items():
        df = store.read_parquet(part).iloc[sorted(wanted)]
        maps.update(zip(zip(df["image_id"], df["label"]), unpack_map_rows(df)))
    return maps
