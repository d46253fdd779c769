"""publish: give the current run's cached stage outputs their contract names."""

from __future__ import annotations

from prefect import task

from gcmine.tasks.infra.artifacts import (
    CLUSTER_CONTINGENCY,
    CLUSTER_LINKAGE,
    CLUSTER_METRICS,
    CLUSTER_TRACES,
    CLUSTERS,
    COLLECTION_MAP,
    CONDITIONING,
    EMBEDDINGS,
    stopwatch,
)
from gcmine.tasks.infra.errors import DamagedArtifact
from gcmine.tasks.infra.integrity import footer_damage
from gcmine.tasks.infra.storage import RunStore, damaged_hint

CONTRACT_NAMES = {
    "embeddings": EMBEDDINGS,
    "clusters": CLUSTERS,
    "cluster_metrics": CLUSTER_METRICS,
    "cluster_traces": CLUSTER_TRACES,
    "cluster_contingency": CLUSTER_CONTINGENCY,
    "cluster_linkage": CLUSTER_LINKAGE,
    "conditioning": CONDITIONING,
    "collection_map": COLLECTION_MAP,
}


@task(name="publish", task_run_name="publish")
def publish(out: str, outputs: dict[str, str], storage_options: dict | None = None) -> dict:
    """Copy each content-addressed output (`outputs`: role -> artifact name) to its contract
    name (`embeddings.parquet`, ...), each copy an atomic write, after a check of the bytes'
    Parquet footer (cached outputs were verified before reuse; this is the last line). Cheap, so
    never cached: the contract files always match this run's inputs."""
    with stopwatch() as clock:
        store = RunStore(out, storage_options)
        for role, source in outputs.items():
            data = store.read_bytes(source)
            damage = footer_damage(len(data), data)  # the bytes in hand: never publish a damaged table
            if damage is not None:
                raise DamagedArtifact(0, f"{store.uri(source)} is damaged ({damage}); {damaged_hint(source)}")
            store.write_bytes(CONTRACT_NAMES[role], data)
    return {"published": sorted(CONTRACT_NAMES[r] for r in outputs), "seconds": clock["seconds"]}
