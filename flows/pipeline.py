"""The gcmine flow: ingest -> embed -> cluster -> finetune -> score -> rank -> report.

The flow only composes tasks; every computation lives in `tasks/` (I/O) and `gcmodels/` (math).
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from gcmodels.config import Settings
from tasks.artifacts import run_info
from tasks.cluster import cluster
from tasks.embed import embed
from tasks.finetune import finetune
from tasks.ingest import ingest
from tasks.rank import elements, rank_shard
from tasks.report import report
from tasks.score import score_shard, typicality_table

__all__ = ["mine", "run_pipeline"]


def _run_name() -> str:
    params = flow_run.parameters
    images = str(params.get("images", "")).rstrip("/").rsplit("/", 1)[-1] or "images"
    return f"mine-{images}"


@flow(name="gcmine", flow_run_name=_run_name, log_prints=True)
def mine(
    images: str,
    out: str,
    labels: str | None = None,
    settings: Settings = Settings(),
    storage_options: dict | None = None,
) -> dict:
    """Mine the typical visual elements of each label of the images in `images` into `out`."""
    so = storage_options
    ingested = ingest(images, labels, out, settings.data, so)
    shards = ingested["shards"]
    embedded = embed(out, shards, settings.embed, so)
    clustered = cluster(out, settings.cluster, so)
    trained = finetune(out, shards, settings.data.resolution, settings.model, settings.train, settings.runtime, so)
    fingerprint = trained["fingerprint"]
    scored = score_shard.map(out, shards, unmapped(fingerprint), unmapped(settings.score), unmapped(settings.runtime), unmapped(so)).result()
    gathered = typicality_table(out, shards, so)
    ranked = rank_shard.map(
        out, shards, unmapped(fingerprint), unmapped(settings.patch_size), unmapped(settings.rank),
        unmapped(settings.runtime), unmapped(so),
    ).result()
    mined = elements(out, shards, settings.rank, so)
    stages = {
        "ingest": ingested, "embed": embedded, "cluster": clustered, "finetune": trained,
        "score": {"seconds": sum(s["seconds"] for s in scored) + gathered["seconds"], "images": gathered["images"]},
        "rank": {"seconds": sum(r["seconds"] for r in ranked) + mined["seconds"], **mined},
    }
    info = run_info(settings, images=images, labels=labels, out=out, stages=stages, flow_run_id=str(flow_run.id))
    reported = report(out, shards, settings.report, info, so)
    stages["report"] = reported
    return {
        "out": out, "report": reported["report"], "stages": stages, "summary": info["summary"],
        "flow_run_id": info["flow_run_id"],
    }


def run_pipeline(
    images: str, out: str, labels: str | None = None, settings: Settings | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Run the flow with the task runner the settings ask for."""
    settings = settings or Settings()
    runner = ThreadPoolTaskRunner(max_workers=settings.runtime.workers)
    return mine.with_options(task_runner=runner)(
        images=images, out=out, labels=labels, settings=settings, storage_options=storage_options
    )
