"""report: the self-contained HTML report and the `run.json` files (the Prefect UI's artifacts: tasks/reporting/uiartifacts.py)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from PIL import Image
from prefect import task

from gcmine.tasks.evaluate import maps_key, maps_kind_of, maps_of
from gcmine.tasks.infra.artifacts import (
    BASELINE,
    BASELINE_DETECTORS,
    CLUSTER_METRICS,
    CLUSTERS,
    COLLECTION_MAP,
    CONFUSION,
    ELEMENTS,
    EVALUATION,
    EVALUATION_SUMMARY,
    LABEL_MATRIX,
    MANIFEST,
    MODEL,
    PATCHES,
    REPORT,
    RUN_JSON,
    SAMPLE_QUALITY,
    SAMPLES,
    TRAINING,
    TRANSLATION_CHANGES,
    TRANSLATIONS,
    TYPICALITY,
    live_rows,
    stopwatch,
    unpack_map_rows,
)
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import TRAINING_SET
from gcmine.tasks.infra.storage import RunStore, open_fs
from gcmine.tasks.reporting import (
    ReportData,
    baseline_section,
    cotypicality_section,
    evaluation_section,
    render_report,
    samples_section,
    translation_section,
)
from gcmodels.config import ReportConfig
from gcmodels.data.images import decode_image
from gcmodels.labels import split_labels

APPLICATIONS = ("classify", "translate", "baseline")  # the optional stages whose results the report shows


def _image_loader(manifest: pd.DataFrame, storage_options: dict | None):
    ok = live_rows(manifest)

    @lru_cache(maxsize=512)
    def load(image_id: str) -> Image.Image:
        source = ok.loc[image_id, "source"]
        fs, path = open_fs(source, storage_options)
        return decode_image(fs.cat_file(path), max_pixels=10**12)

    return load


def _map_loader(store: RunStore, parts: list[str], wanted: set[str]):
    maps: dict[str, np.ndarray] = {}
    for part in parts:
        df = store.read_parquet(part)
        sel = df[df["image_id"].isin(wanted)]
        if len(sel):
            maps.update(zip(sel["image_id"], unpack_map_rows(sel)))
    return lambda image_id: maps[image_id]


def own_label_rows(typicality: pd.DataFrame) -> pd.DataFrame:
    """The rows of `typicality.parquet` that score each image under its own label, or under each
    of its labels (``image_label`` "a|b"): all rows of a run without cotypicality; tables written
    before `image_label` existed are taken as they are."""
    if "image_label" not in typicality.columns:
        return typicality
    own = [
        isinstance(mine, str) and (label == mine or label in split_labels(mine))
        for label, mine in zip(typicality["label"], typicality["image_label"])
    ]
    return typicality[np.asarray(own, bool)].reset_index(drop=True)


def application_sections(store: RunStore, applications: dict, load_image, run_info: dict) -> list[tuple[str, str, str]]:
    """The report sections of the applications that ran (classify, translate, baseline)."""
    sections = []
    if "classify" in applications:
        html = cotypicality_section(
            store.read_parquet(LABEL_MATRIX), store.read_parquet(CONFUSION), applications["classify"]
        )
        sections.append(("cotypicality", "Cotypicality and classifier", html))
    if "translate" in applications:

        @lru_cache(maxsize=1024)
        def load_png(path: str):
            try:
                return decode_image(store.read_bytes(path), max_pixels=10**8)
            except Exception:
                return None

        html = translation_section(
            store.read_parquet(TRANSLATIONS),
            store.read_parquet(TRANSLATION_CHANGES),
            load_png,
            applications["translate"],
        )
        sections.append(("translation", "Translation across labels", html))
    if "baseline" in applications:
        timings = run_info.get("timings", {})
        typ = sum(float(timings.get(k, 0.0)) for k in ("finetune", "score", "rank"))
        html = baseline_section(
            store.read_parquet(BASELINE),
            store.read_parquet(BASELINE_DETECTORS),
            store.read_parquet(ELEMENTS),
            store.read_parquet(PATCHES),
            load_image,
            {"typicality": typ, "baseline": applications["baseline"]["seconds"]},
        )
        sections.append(("baseline", "Classic baseline", html))
    return sections


def _real_shown(store: RunStore, labels: list[str], per_label: int, seed: int) -> dict[str, list[str]]:
    """Per label, `per_label` images the model was trained on under it (a seeded choice), shown
    beside the samples."""
    trained = store.read_parquet(f"{MODEL}/{TRAINING_SET}")
    rng = np.random.default_rng(seed)
    shown = {}
    for label in labels:
        carries = [isinstance(v, str) and label in split_labels(v) for v in trained["label"]]
        ids = np.sort(trained.loc[np.asarray(carries, bool), "image_id"].astype(str).unique())
        shown[label] = [str(i) for i in (rng.choice(ids, per_label, replace=False) if len(ids) > per_label else ids)]
    return shown


def _samples_section(store: RunStore, run_info: dict, load_image) -> str | None:
    """The samples beside real images, when `sample_quality.parquet` was made by the run's model."""
    if not (store.exists(SAMPLE_QUALITY) and store.exists(SAMPLES)):
        return None
    quality = store.read_parquet(SAMPLE_QUALITY)
    fingerprint = ((run_info.get("stages") or {}).get("finetune") or {}).get("fingerprint")
    if quality.empty or fingerprint is None or set(quality["fingerprint"]) != {fingerprint}:
        return None  # made by another model (an earlier run of this root): not this run's samples
    table = store.read_parquet(SAMPLES)
    labels = [str(v) for v in quality["label"] if v != "(all)"]
    per_label = int(table.groupby("label").size().max()) if len(table) else 0
    seed = int(table["seed"].iloc[0]) if len(table) else 0
    real = _real_shown(store, labels, per_label, seed) if store.exists(f"{MODEL}/{TRAINING_SET}") else {}

    def image(image_id: str):
        try:
            return load_image(image_id)
        except Exception:
            return None

    def png(data: bytes):
        try:
            return decode_image(data, max_pixels=10**8)
        except Exception:
            return None

    return samples_section(quality, table, real, png, image)


def measured_sections(store: RunStore, run_info: dict, load_image=None) -> list[tuple[str, str, str]]:
    """The report sections of what was measured on the finished run, when its tables are in the
    run root: the model's samples against the real images (`report.samples`), the maps against
    the user's boxes (`gcmine evaluate`)."""
    sections = []
    if load_image is not None and (html := _samples_section(store, run_info, load_image)) is not None:
        sections.append(("samples", "Samples and real images", html))
    if store.exists(EVALUATION_SUMMARY):
        summary = store.read_parquet(EVALUATION_SUMMARY)
        table = store.read_parquet(EVALUATION) if store.exists(EVALUATION) else None
        current = maps_of(run_info)
        stale = "maps" in summary.columns and bool(current) and bool((summary["maps"] != maps_key(current)).any())
        sections.append(
            (
                "evaluation",
                "Evaluation against boxes",
                evaluation_section(summary, table, stale, maps_kind_of(run_info)),
            )
        )
    return sections


def render_run_report(
    store: RunStore,
    maps: list[str],
    config: ReportConfig,
    run_info: dict,
    storage_options: dict | None,
    applications: dict | None,
) -> None:
    """Render the report of the run root of `store` from its tables and write `report/index.html`."""
    manifest = store.read_parquet(MANIFEST)
    elements_df = store.read_parquet(ELEMENTS)
    patches = store.read_parquet(PATCHES)
    typicality = own_label_rows(store.read_parquet(TYPICALITY))
    given = live_rows(manifest)["label"].reset_index()  # image_id, label (the given labels)
    clusters = store.read_parquet(CLUSTERS).merge(given, on="image_id", how="left")
    points = (
        store.read_parquet(COLLECTION_MAP).merge(given, on="image_id", how="left")
        if store.exists(COLLECTION_MAP)
        else None
    )
    labels = sorted(typicality["label"].dropna().unique().tolist())
    load_image = _image_loader(manifest, storage_options)
    wanted = set(
        typicality.sort_values("typicality", ascending=False)
        .groupby("label")
        .head(config.heatmaps_per_label)["image_id"]
    )
    data = ReportData(
        title=f"gcmine report: {run_info.get('images', '')}",
        summary=run_info.get("summary", {}),
        labels=labels,
        elements=elements_df,
        patches=patches,
        typicality=typicality,
        clusters=clusters,
        cluster_metrics=store.read_parquet(CLUSTER_METRICS),
        training=store.read_parquet(TRAINING),
        rejected=manifest[manifest["status"] == "rejected"][["source", "reason"]].reset_index(drop=True),
        load_image=load_image,
        load_map=_map_loader(store, maps, wanted),
        collection_map=points,
        conditioning=run_info.get("stages", {}).get("condition"),
        map_method=run_info.get("stages", {}).get("map", {}).get("method", config.map_method),
        maps_kind=maps_kind_of(run_info),
        extra_sections=measured_sections(store, run_info, load_image)
        + application_sections(store, applications or {}, load_image, run_info),
    )
    html = render_report(
        data,
        elements_per_label=config.elements_per_label,
        patches_per_element=config.patches_per_element,
        heatmaps_per_label=config.heatmaps_per_label,
        map_interactive_max=config.map_interactive_max,
        map_thumbnails_per_cluster=config.map_thumbnails_per_cluster,
    )
    store.write_text(REPORT, html)


@task(name="report", task_run_name="report")
def report(
    out: str,
    maps: list[str],
    config: ReportConfig,
    run_info: dict,
    storage_options: dict | None = None,
    applications: dict | None = None,
) -> dict:
    """Render `report/index.html` and write `run.json` in each artifact folder.
    `applications`: the results of the optional classify / translate / baseline tasks that ran."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        render_run_report(store, maps, config, run_info, storage_options, applications)
    info = {**run_info, "report_seconds": clock["seconds"]}
    for folder in ("", f"{MODEL}/", "report/"):
        store.write_json(folder + RUN_JSON, info)
    report_uri = store.uri(REPORT)
    log.info("report written to %s", report_uri)
    return {"report": report_uri, "seconds": clock["seconds"]}


@task(name="report-again", task_run_name="report-again")
def report_again(out: str, storage_options: dict | None = None) -> dict:
    """Render the report of a finished run again from its run root, as the run's `run.json`
    records it (maps, report settings, applications), so that what was measured since (the
    evaluation against boxes) appears in it. `run.json` is left as the run wrote it. Returns the
    report's URI and the report settings used (`config`)."""
    log = stage_logger()
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        info = store.read_json(RUN_JSON)
        try:
            config = ReportConfig(**((info.get("config") or {}).get("report") or {}))
        except ValueError as err:  # a run.json of another gcmine version: its report settings as far as they go
            log.warning("report settings of %s not usable (%s): the defaults are used", store.uri(RUN_JSON), err)
            config = ReportConfig()
        stages = info.get("stages") or {}
        applications = {k: stages[k] for k in APPLICATIONS if k in stages}
        maps = maps_of(info).get("finetuned", [])
        render_run_report(
            store, maps, config, {k: v for k, v in info.items() if k != "report_seconds"}, storage_options, applications
        )
    log.info("report rendered again: %s", store.uri(REPORT))
    return {"report": store.uri(REPORT), "seconds": clock["seconds"], "config": config}
