"""The run's bookkeeping: which stages (and which shards of a mapped stage) were reused from
earlier runs, and each stage's summary (seconds of work done, images, workers) as `run.json` and
the report record them. Plain data: the flow calls these after its tasks returned."""

from __future__ import annotations

import logging

__all__ = [
    "RunLedger",
    "computed_seconds",
    "latents_stage",
    "rank_stage",
    "reused_shards",
    "run_stages",
    "score_stage",
    "workers",
]

Results = list[tuple[dict, bool]]  # what `map_cached` returns: (task result, cache hit) per shard


class RunLedger:
    """What a run reused from earlier runs (no model work), in the order the stages ran."""

    def __init__(self) -> None:
        self.reused: list[str] = []

    def cached(self, name: str, hit: bool) -> None:
        """One cached task run: `name` counts as reused when it was a cache hit."""
        self.reused += [name] * hit

    def mapped(self, name: str, results: Results) -> None:
        """A stage mapped over the shards: each shard that was a cache hit counts as `name[shard]`."""
        self.reused += reused_shards(name, results)

    def log(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        """One line naming what was reused, when anything was."""
        if self.reused:
            logger.info("reused from earlier runs (no model work): %s", ", ".join(self.reused))


def reused_shards(name: str, results: Results) -> list[str]:
    """`name[shard]` of each shard of a mapped stage that was a cache hit."""
    return [f"{name}[{r['shard']}]" for r, hit in results if hit]


def workers(results: Results) -> list[str]:
    """The processes (`host:pid`) that computed the shards of a stage in this run."""
    return sorted({r["worker"] for r, hit in results if not hit and "worker" in r})


def computed_seconds(results: Results) -> float:
    """Seconds of work of the shards computed in this run (cache hits cost none)."""
    return sum(r["seconds"] for r, hit in results if not hit)


def latents_stage(encoded: Results, base: str, family: str | None) -> dict:
    """The latents stage's summary: seconds, images encoded by the VAE of `base`, its family, workers."""
    return {
        "seconds": computed_seconds(encoded),
        "images": sum(r["images"] for r, _ in encoded),
        "base": base,
        "family": family,
        "workers": workers(encoded),
    }


def score_stage(scored: Results, gathered: dict, scored_base: Results | None = None) -> dict:
    """The score stage's summary: seconds (shards and gather, and the base model's shards with
    score.compare_base), images, workers and map artifacts (`maps_base`: the base model's)."""
    return {
        "seconds": computed_seconds(scored) + gathered["seconds"] + computed_seconds(scored_base or []),
        "images": gathered["images"],
        "workers": workers(scored),
        "maps": [r["maps"] for r, _ in scored],
        # what the maps are (score.contrast): one kind for every shard; a result of an earlier version says nothing
        "maps_kind": " / ".join(sorted({str(r.get("maps_kind", "typicality")) for r, _ in scored})) or "typicality",
        **({"maps_base": [r["maps"] for r, _ in scored_base]} if scored_base else {}),
    }


def rank_stage(ranked: Results, mined: dict, published: dict) -> dict:
    """The rank stage's summary: seconds (shards, elements and publishing), the elements' summary,
    workers."""
    return {
        "seconds": computed_seconds(ranked) + mined["seconds"] + published["seconds"],
        **mined,
        "workers": workers(ranked),
    }


def run_stages(
    ingested: dict,
    encoded: dict[str, dict],
    embedded: dict,
    clustered: dict,
    conditioned: dict,
    mapped: dict,
    trained: dict,
    scored: dict,
    ranked: dict,
    applications: dict[str, dict],
    sampled: dict[str, dict],
) -> dict[str, dict]:
    """Every stage's summary by name, in pipeline order (the order of run.json's timings);
    `encoded`, `applications` and `sampled` hold only the optional stages that ran."""
    return {
        "ingest": ingested,
        **encoded,
        "embed": embedded,
        "cluster": clustered,
        "condition": conditioned,
        "map": mapped,
        "finetune": trained,
        "score": scored,
        "rank": ranked,
        **applications,
        **sampled,
    }
