"""watch: list a dataset location, compare it with the last listing, announce changes as an event.

A file counts as *changed* when its size or its modification stamp differs from the last listing:
the local `mtime`, or on S3 the object's `ETag` (the MD5 of the bytes for single-part uploads),
falling back to `LastModified`. Nothing is downloaded, so a watch of a large bucket costs one
listing. A file rewritten with the same bytes is reported as changed; the reprocessing run then
finds its content already ingested (shards are keyed on content) and does no model work for it.

The last listing is `OUT/watch/listing.parquet`. Before the first watch of a run root that was
already mined, the baseline is the run's `manifest.parquet`: its files count as unchanged.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pandas as pd
from prefect import task
from prefect.events import emit_event

from gcmine.tasks.infra.artifacts import MANIFEST
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import RunStore, is_local, open_fs
from gcmine.tasks.ingest import InputError, _local_rel, _transient

__all__ = [
    "DATASET_UPDATED",
    "LISTING",
    "announce",
    "compare",
    "dataset_resource",
    "diff_listings",
    "listing_table",
    "save_listing",
]

DATASET_UPDATED = "gcmine.dataset.updated"
LISTING = "watch/listing.parquet"
LISTING_NEXT = "watch/listing-next.parquet"  # staged by compare, kept by save_listing
LISTING_COLUMNS = ["name", "size", "stamp"]


def _stamp(info: dict) -> str:
    """The modification stamp of one listing entry (see the module docstring)."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            return str(value).strip('"')
    return ""


def listing_table(uri: str, extensions: tuple[str, ...], storage_options: dict | None = None) -> pd.DataFrame:
    """One row per image file under `uri` (name relative to it, size, stamp), sorted by name.
    When `uri` is a CSV/Parquet manifest file, that one file is the listing."""
    fs, path = open_fs(uri, storage_options)
    fs.invalidate_cache(path)  # a long-lived process must see the bucket as it is now
    if fs.isdir(path):
        exts = tuple(e.lower() for e in extensions)
        found = fs.find(path, detail=True)
        rows = [
            {
                "name": _local_rel(p, path) if is_local(fs) else posixpath.relpath(p, path),
                "size": int(info.get("size") or 0),
                "stamp": _stamp(info),
            }
            for p, info in found.items()
            if p.lower().endswith(exts)
        ]
    elif fs.exists(path):
        info = fs.info(path)
        rows = [{"name": posixpath.basename(path), "size": int(info.get("size") or 0), "stamp": _stamp(info)}]
    else:
        raise InputError(f"dataset {uri} does not exist")
    return pd.DataFrame(rows, columns=LISTING_COLUMNS).sort_values("name", ignore_index=True)


def _baseline(uri: str, store: RunStore, storage_options: dict | None) -> tuple[pd.DataFrame | None, str]:
    """The last listing of `uri`, or the names of the run's manifest (no sizes), or None."""
    if store.exists(LISTING):
        return store.read_parquet(LISTING), "last watch"
    if store.exists(MANIFEST):
        sources = store.read_parquet(MANIFEST, columns=["source"])["source"].astype(str)
        fs, root = open_fs(uri, storage_options)
        base = root if is_local(fs) else uri.rstrip("/")
        names = [s[len(base) + 1 :] for s in sources if s.startswith(base + "/")]
        return pd.DataFrame({"name": names, "size": pd.NA, "stamp": pd.NA}), "manifest"
    return None, "nothing"


def diff_listings(old: pd.DataFrame | None, new: pd.DataFrame) -> dict[str, list[str]]:
    """Names added, changed (size or stamp differ; entries without a size are taken as unchanged)
    and removed between two listings."""
    if old is None:
        return {"added": sorted(new["name"]), "changed": [], "removed": []}
    m = new.merge(old.drop_duplicates("name"), on="name", how="outer", suffixes=("", "_old"), indicator=True)
    both = m[m["_merge"] == "both"]
    old_size = pd.to_numeric(both["size_old"], errors="coerce")
    differs = (pd.to_numeric(both["size"]) != old_size) | (both["stamp"].astype(str) != both["stamp_old"].astype(str))
    changed = both.loc[old_size.notna() & differs, "name"]
    return {
        "added": sorted(m.loc[m["_merge"] == "left_only", "name"]),
        "changed": sorted(changed),
        "removed": sorted(m.loc[m["_merge"] == "right_only", "name"]),
    }


def dataset_resource(uri: str) -> dict[str, str]:
    """The Prefect event resource naming a dataset location."""
    return {"prefect.resource.id": f"gcmine.dataset.{uri}", "prefect.resource.name": uri, "gcmine.uri": uri}


@task(
    name="compare-listing",
    task_run_name="compare-listing",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
)
def compare(uri: str, out: str, extensions: tuple[str, ...], storage_options: dict | None = None) -> dict[str, Any]:
    """List `uri` and compare it with the last watch (or the last manifest): counts of the files
    added, changed and removed, up to 5 examples of each. The new listing is staged in the run
    root (`save_listing` makes it the baseline), so no table passes between tasks."""
    store = RunStore(out, storage_options)
    listing = listing_table(uri, extensions, storage_options)
    old, against = _baseline(uri, store, storage_options)
    diff = diff_listings(old, listing)
    store.write_parquet(LISTING_NEXT, listing)
    counts = {k: len(v) for k, v in diff.items()}
    stage_logger().info(
        "%s against the %s: %d added, %d changed, %d removed (%d files now)",
        uri,
        against,
        counts["added"],
        counts["changed"],
        counts["removed"],
        len(listing),
    )
    return {**counts, "files": len(listing), "against": against, "examples": {k: v[:5] for k, v in diff.items()}}


@task(name="announce", task_run_name="announce")
def announce(uri: str, out: str, changes: dict[str, Any]) -> str | None:
    """Emit `gcmine.dataset.updated` for `uri` with the run root and the counts; the event id."""
    payload = {"uri": uri, "out": out, **{k: changes[k] for k in ("added", "changed", "removed", "files")}}
    event = emit_event(event=DATASET_UPDATED, resource=dataset_resource(uri), payload=payload)
    if event is None:
        stage_logger().warning("event %s for %s was not emitted (no Prefect API to send it to)", DATASET_UPDATED, uri)
        return None
    stage_logger().info("emitted %s for %s (event %s)", DATASET_UPDATED, uri, event.id)
    return str(event.id)


@task(name="save-listing", task_run_name="save-listing", retries=2, retry_delay_seconds=2)
def save_listing(out: str, storage_options: dict | None = None) -> str:
    """Make the listing staged by `compare` the baseline of the next watch; its URI."""
    store = RunStore(out, storage_options)
    store.write_bytes(LISTING, store.read_bytes(LISTING_NEXT))
    store.fs.rm(store.path(LISTING_NEXT))
    return store.uri(LISTING)
