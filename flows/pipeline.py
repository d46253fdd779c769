"""The gcmine flow: ingest -> embed -> cluster -> finetune -> score -> rank -> report, with the
optional applications between rank and report (classify with score.cotypicality, translate,
baseline).

The flow only composes tasks; every computation lives in `tasks/` (I/O) and `gcmodels/` (math).
Model stages are cached on content fingerprints (see tasks/infra/caching.py), so a rerun - after a
crash, or on a dataset that grew - redoes only what changed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from gcmine.flows.runners import in_process_runtime, task_runner, training_cards
from gcmine.tasks.baseline import baseline
from gcmine.tasks.classify import classify
from gcmine.tasks.cluster import cluster, collection_map, condition
from gcmine.tasks.embed import embed, embed_shard, embeddings_table
from gcmine.tasks.finetune import finetune
from gcmine.tasks.infra.artifacts import run_info
from gcmine.tasks.infra.caching import map_cached, run_cached
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.lease import run_lease
from gcmine.tasks.infra.ledger import (
    RunLedger,
    computed_seconds,
    latents_stage,
    rank_stage,
    reused_shards,
    run_stages,
    score_stage,
    workers,
)
from gcmine.tasks.infra.storage import RunStore, sweep_leftovers, sweep_scratch
from gcmine.tasks.ingest import ingest
from gcmine.tasks.latents import base_key, check_base, check_class_labels, latents_shard
from gcmine.tasks.publish import publish
from gcmine.tasks.rank import elements, rank_shard
from gcmine.tasks.report import report
from gcmine.tasks.reporting.uiartifacts import publish_ui_artifacts, ui_summary
from gcmine.tasks.samples import check_inception, samples
from gcmine.tasks.score import score_shard, typicality_table
from gcmine.tasks.translate import translate
from gcmodels.config import Settings
from gcmodels.embedding.encoders import fits_on_collection
from gcmodels.runtime import check_device

__all__ = ["embed_stage", "mine", "run_pipeline", "task_runner"]


def _run_name() -> str:
    params = flow_run.parameters
    images = str(params.get("images", "")).rstrip("/").rsplit("/", 1)[-1] or "images"
    return f"mine-{images}"


def embed_stage(
    out: str, ingested: dict, settings: Settings, fingerprint: str | None, so: dict | None, reused: list[str]
) -> dict:
    """The embeddings table: one global fit-and-embed task for encoders fitted on the collection;
    for the others (clip, diffusion) one task run per shard, mapped over the workers, and a gather."""
    shards, config = ingested["shards"], settings.embed
    model = {"fingerprint": fingerprint, "runtime": settings.runtime} if fingerprint else {}
    if fits_on_collection(config.method):
        embedded, hit = run_cached(
            embed,
            ("embeddings",),
            out=out,
            shards=[s["name"] for s in shards],
            images_key=ingested["images_key"],
            config=config,
            storage_options=so,
        )
        reused += ["embed"] * hit
        return embedded
    parts = map_cached(
        embed_shard, ("embeddings",), "shard", shards, out=out, config=config, storage_options=so, **model
    )
    reused += reused_shards("embed", parts)
    gathered, _ = run_cached(
        embeddings_table,
        ("embeddings",),
        out=out,
        parts=[r["embeddings"] for r, _ in parts],
        images_key=ingested["images_key"],
        config=config,
        fingerprint=fingerprint,
        storage_options=so,
    )
    first = parts[0][0]
    return {
        "images": gathered["images"],
        "dim": first["dim"],
        "encoder": first["encoder"],
        "embeddings": gathered["embeddings"],
        "seconds": computed_seconds(parts) + gathered["seconds"],
        "workers": workers(parts),
    }


@flow(name="gcmine", flow_run_name=_run_name, log_prints=True)
def mine(
    images: str,
    out: str,
    labels: str | None = None,
    settings: Settings = Settings(),
    storage_options: dict | None = None,
) -> dict:
    """Mine the typical visual elements of each label of the images in `images` into `out`.
    `storage_options` (for s3:// URIs) default to those built from `settings.storage`.

    The run holds the lease of `out` throughout (one writer per run root: a second run waits or
    refuses, see tasks/infra/lease.py) and first sweeps what interrupted writes left there."""
    so = storage_options if storage_options is not None else settings.storage.store_options()
    check_device(settings.runtime)  # a device that is not there fails now, before any work
    if settings.report.samples > 0:  # nor does a report.inception that is not the FID network
        check_inception(settings.report.inception)
    training_cards(settings.runtime, settings.train.processes)  # nor do too few GPUs for train.processes
    checkpoint = None
    if settings.model.base is not None:  # an unsupported checkpoint, bad feature block or class map fails now
        checkpoint = check_base(
            settings.model.base,
            settings.rank.feature_block,
            class_map=settings.model.class_map,
            resolution=settings.data.resolution,
            resize=settings.data.resize,
            embed_block=settings.embed.diffusion_block if settings.embed.method == "diffusion" else None,
        )
    store, storage = RunStore(out, so), settings.storage
    with run_lease(
        store,
        flow_run_id=str(flow_run.id),
        mode=storage.lease,
        wait=storage.lease_wait,
        expiry=storage.lease_expiry,
        logger=get_run_logger(),
    ):
        swept = sweep_leftovers(store, older_than=storage.lease_expiry) + sweep_scratch()
        if swept:
            get_run_logger().warning("removed %d leftover(s) of interrupted runs: %s", len(swept), ", ".join(swept[:5]))
        return _mine(images, out, labels, settings, so, checkpoint)


def _mine(images: str, out: str, labels: str | None, settings: Settings, so: dict, checkpoint) -> dict:
    """The stages of `mine`, run under the lease of `out` (`checkpoint`: what `check_base` found
    in model.base, or None)."""
    ledger = RunLedger()
    ingested = ingest(images, labels, out, settings.data, so, multiple=settings.working_multiple)
    if checkpoint is not None and checkpoint.conditioning == "class":  # every label needs a class of the checkpoint
        given = [] if settings.data.labels == "clusters" else list(ingested["labels"])
        check_class_labels(checkpoint, settings.model.class_map, given, so, multi_label=ingested.get("multi_label", 0))
    if settings.data.labels != "clusters":  # score.contrast=true with one label: refused before any model work
        try:
            settings.score.contrast_mode(len(ingested["labels"]))
        except ValueError as err:
            raise InputError(f"{images}: {err}") from None
    shards = ingested["shards"]
    names = [s["name"] for s in shards]
    latents, encoded_stage = _encode_latents(out, shards, settings, so, checkpoint, ledger)

    def train(conditioning: str | None) -> dict:
        return _train(out, names, settings, so, conditioning, latents, ledger)

    # embed.method=diffusion embeds with the fine-tuned model, so fine-tuning (on the given labels:
    # the settings refuse clusters as labels then) comes first
    trained = train(None) if settings.embed.method == "diffusion" else None
    embedded = embed_stage(out, ingested, settings, trained["fingerprint"] if trained else None, so, ledger.reused)
    clustered, conditioned, mapped = _cluster(out, ingested, embedded, settings, so, ledger)
    # given labels are read from the manifest (per-shard label fingerprints keep reruns incremental)
    conditioning = conditioned["conditioning"] if conditioned["source"] == "clusters" else None
    if trained is None:
        trained = train(conditioning)
    fingerprint = trained["fingerprint"]
    scored, gathered, ranked, mined = _score_and_rank(
        out, shards, latents, fingerprint, conditioning, settings, so, ledger
    )
    scored_base = _score_base(out, shards, latents, fingerprint, conditioning, settings, so, ledger)
    applications = _applications(out, names, fingerprint, conditioning, settings, so)
    cluster_outputs = ("clusters", "cluster_metrics", "cluster_traces", "cluster_contingency", "cluster_linkage")
    published = publish(
        out,
        {
            "embeddings": embedded["embeddings"],
            **{r: clustered[r] for r in cluster_outputs},
            "conditioning": conditioned["conditioning"],
            "collection_map": mapped["collection_map"],
        },
        so,
    )
    sampled = {}
    if settings.report.samples > 0:  # did the model learn the data? samples beside real images
        sampled["samples"] = samples(
            out,
            names,
            fingerprint,
            embedded["embeddings"],
            settings.report,
            settings.embed,
            settings.data.resolution,
            in_process_runtime(settings.runtime),
            so,
        )
    ledger.log(get_run_logger())
    stages = run_stages(
        ingested,
        encoded_stage,
        embedded,
        clustered,
        conditioned,
        mapped,
        trained,
        score_stage(scored, gathered, scored_base),
        rank_stage(ranked, mined, published),
        applications,
        sampled,
    )
    info = run_info(
        settings,
        images=images,
        labels=labels,
        out=out,
        stages=stages,
        flow_run_id=str(flow_run.id),
        reused=ledger.reused,
        checkpoint=checkpoint,
    )
    reported = report(out, [r["maps"] for r, _ in scored], settings.report, info, so, applications)
    stages["report"] = reported
    # the Prefect UI's summary, on the run the user opened: the deployment's run, or this one
    publish_ui_artifacts(ui_summary(out, settings.report, so), flow_run.root_flow_run_id or flow_run.id)
    return {
        "out": out,
        "report": reported["report"],
        "stages": stages,
        "summary": info["summary"],
        "flow_run_id": info["flow_run_id"],
        "reused": ledger.reused,
        "classifier": applications.get("classify"),
    }


def _encode_latents(
    out: str, shards: list[dict], settings: Settings, so: dict, checkpoint, ledger: RunLedger
) -> tuple[list[str | None], dict[str, dict]]:
    """model.base (Stable Diffusion): every working image encoded once by the VAE, per shard. The
    latents artifact of each shard (None each without model.base) and the latents stage's summary
    by name (empty without model.base)."""
    latents: list[str | None] = [None] * len(shards)
    encoded_stage: dict[str, dict] = {}
    if settings.model.base is not None:
        encoded = map_cached(
            latents_shard,
            ("latents",),
            "shard",
            shards,
            out=out,
            base=settings.model.base,
            vae_key=base_key(settings.model.base),
            runtime=settings.runtime,
            storage_options=so,
        )
        ledger.mapped("latents", encoded)
        latents = [r["latents"] for r, _ in encoded]
        encoded_stage["latents"] = latents_stage(
            encoded, settings.model.base, checkpoint.family if checkpoint else None
        )
    return latents, encoded_stage


def _train(
    out: str,
    names: list[str],
    settings: Settings,
    so: dict,
    conditioning: str | None,
    latents: list[str | None],
    ledger: RunLedger,
) -> dict:
    """The finetune task on the shards `names`, conditioned on the manifest's labels (None) or the
    table `conditioning`; counted as reused when it reused the run root's model."""
    result = finetune(
        out,
        names,
        settings.data.resolution,
        settings.model,
        settings.train,
        in_process_runtime(settings.runtime),
        so,
        conditioning=conditioning,
        holdout=settings.score.holdout,
        holdout_seed=settings.score.seed,
        latents=latents if settings.model.base is not None else None,
    )
    ledger.cached("finetune", result["reused"])
    return result


def _cluster(
    out: str, ingested: dict, embedded: dict, settings: Settings, so: dict, ledger: RunLedger
) -> tuple[dict, dict, dict]:
    """Cluster the embeddings, pick the labels that condition the model (the given ones, or the
    clusters as pseudo-labels) and lay out the collection map: the three tasks' results."""
    clustered, hit = run_cached(
        cluster,
        ("clusters", "cluster_metrics", "cluster_traces", "cluster_contingency", "cluster_linkage"),
        out=out,
        embeddings=embedded["embeddings"],
        labels_key=ingested["labels_key"],
        config=settings.cluster,
        runtime=settings.runtime,
        storage_options=so,
    )
    ledger.cached("cluster", hit)
    # the labels that condition the model: the given ones, or the clusters as pseudo-labels
    conditioned = condition(out, clustered["clusters"], ingested["labels_key"], settings.data.labels, so)
    mapped, hit = run_cached(
        collection_map,
        ("collection_map",),
        out=out,
        embeddings=embedded["embeddings"],
        clusters=clustered["clusters"],
        method=settings.report.map_method,
        seed=settings.report.map_seed,
        storage_options=so,
    )
    ledger.cached("collection-map", hit)
    return clustered, conditioned, mapped


def _score_and_rank(
    out: str,
    shards: list[dict],
    latents: list[str | None],
    fingerprint: str,
    conditioning: str | None,
    settings: Settings,
    so: dict,
    ledger: RunLedger,
) -> tuple[list[tuple[dict, bool]], dict, list[tuple[dict, bool]], dict]:
    """Score every shard with the model `fingerprint` and gather the typicality table; rank each
    shard's patches and mine the elements. The per-shard results of score and rank (with their
    cache hits), the gathered table and the elements."""
    scored = _map_score(
        out,
        list(zip(shards, latents)),
        fingerprint,
        conditioning,
        settings,
        so,
        settings.score,
        # adaptive draws serve rank's top patches; plain scoring does not depend on rank's settings
        ranking=(
            {"top_k": settings.rank.per_label, "per_image": settings.rank.per_image, "patch_size": settings.patch_size}
            if settings.score.adaptive
            else None
        ),
    )
    ledger.mapped("score", scored)
    gathered = typicality_table(out, [r["scores"] for r, _ in scored], so)
    ranked = map_cached(
        rank_shard,
        ("candidates",),
        ("shard", "maps", "latents"),
        [(shard, s["maps"], z) for shard, (s, _), z in zip(shards, scored, latents)],
        out=out,
        fingerprint=fingerprint,
        patch_size=settings.patch_size,
        config=settings.rank,
        runtime=settings.runtime,
        storage_options=so,
    )
    ledger.mapped("rank", ranked)
    mined = elements(out, [r["candidates"] for r, _ in ranked], settings.rank, so)
    return scored, gathered, ranked, mined


def _map_score(
    out: str,
    items: list[tuple[dict, str | None]],
    fingerprint: str,
    conditioning: str | None,
    settings: Settings,
    so: dict,
    config,
    **extra,
) -> list[tuple[dict, bool]]:
    """`score_shard` mapped over the (shard, latents) `items` with `config`, cached per shard."""
    return map_cached(
        score_shard,
        ("maps", "scores"),
        ("shard", "latents"),
        items,
        out=out,
        fingerprint=fingerprint,
        config=config,
        runtime=settings.runtime,
        storage_options=so,
        conditioning=conditioning,
        **extra,
    )


def _score_base(
    out: str,
    shards: list[dict],
    latents: list[str | None],
    fingerprint: str,
    conditioning: str | None,
    settings: Settings,
    so: dict,
    ledger: RunLedger,
) -> list[tuple[dict, bool]]:
    """score.compare_base: every shard scored again with the checkpoint before fine-tuning
    (plain scoring, the same draws), written apart; none otherwise."""
    if not settings.score.compare_base:
        return []
    plain = settings.score.model_copy(update={"adaptive": False})
    scored = _map_score(
        out, list(zip(shards, latents)), fingerprint, conditioning, settings, so, plain, base=settings.model
    )
    ledger.mapped("score-base", scored)
    return scored


def _applications(
    out: str, names: list[str], fingerprint: str, conditioning: str | None, settings: Settings, so: dict
) -> dict[str, dict]:
    """The optional applications the settings enable, by name: classify (score.cotypicality),
    translate, baseline."""
    applications: dict[str, dict] = {}
    if settings.score.cotypicality:
        applications["classify"] = classify(out, fingerprint, so)
    if settings.translate.enabled:
        applications["translate"] = translate(
            out,
            names,
            fingerprint,
            settings.patch_size,
            settings.translate,
            settings.score,
            in_process_runtime(settings.runtime),
            so,
        )
    if settings.baseline.enabled:
        applications["baseline"] = baseline(out, names, settings.patch_size, settings.baseline, so, conditioning)
    return applications


def run_pipeline(
    images: str,
    out: str,
    labels: str | None = None,
    settings: Settings | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Run the flow with the task runner the settings ask for."""
    settings = settings or Settings()
    return mine.with_options(task_runner=task_runner(settings.runtime))(
        images=images, out=out, labels=labels, settings=settings, storage_options=storage_options
    )
