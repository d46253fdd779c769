"""Stage caching on content fingerprints, through Prefect's cache policies.

A cached stage's key hashes its inputs (fingerprints of the data it reads, its config section)
and the code version (the content of gcmodels/ and tasks/), never paths or times. Results (the
small dicts tasks return) are persisted as JSON under ``OUT/.cache/``, so a rerun - also after a
crash - finds them. Cached stages write their outputs under content-addressed names, so a cache
hit can never point at a file that a run with other inputs overwrote since. A hit is trusted only
when its output files are there and sound (tasks/infra/integrity.py); a damaged one is recomputed with
a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from gcmine.tasks.infra.integrity import artifact_damage
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.storage import POLICY_KEY, RunStore, is_local, join_uri

__all__ = ["STAGE_CACHE", "cached", "code_fingerprint", "content_key"]

CACHE_DIR = ".cache"
# Inputs that say where or how to run, not what to compute.
NOT_KEYED = ("out", "storage_options", "runtime")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def content_key(*parts: Any, length: int = 16) -> str:
    """Stable hash of JSON-able parts (pydantic models by their values)."""
    blob = json.dumps(_plain(list(parts)), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the source of gcmodels/ and tasks/: the code version of every cached result.

    The folders are found from the imported packages (a checkout or an installed wheel alike)."""
    import gcmine.tasks
    import gcmodels

    h = hashlib.sha256()
    files = 0
    for name, package in (("gcmodels", gcmodels), ("tasks", gcmine.tasks)):
        folder = Path(package.__file__).resolve().parent
        for path in sorted(folder.rglob("*.py")):
            h.update(f"{name}/{path.relative_to(folder).as_posix()}".encode())
            h.update(path.read_bytes())
            files += 1
    if files == 0:  # a fingerprint of nothing would never invalidate a cached result
        raise RuntimeError("code_fingerprint found no source files of gcmodels and tasks")
    return h.hexdigest()[:16]


@dataclass
class StageCache(CachePolicy):
    """Key = task name + code version + every input except where/how to run."""

    exclude: tuple[str, ...] = field(default=NOT_KEYED)

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        keyed = {k: v for k, v in (inputs or {}).items() if k not in self.exclude}
        return content_key(task_ctx.task.name, code_fingerprint(), keyed, length=64)


STAGE_CACHE = StageCache()


SECRET_OPTIONS = ("key", "secret", "token", "password")


def _result_storage(out: str, storage_options: dict | None):
    """Where Prefect persists cached results: `OUT/.cache/`. Remote roots need a saved block; it
    holds no secret (credentials keep coming from the environment or the AWS profile)."""
    from prefect.filesystems import RemoteFileSystem

    store = RunStore(out, storage_options)
    if is_local(store.fs):
        return Path(store.path(CACHE_DIR))
    basepath = join_uri(f"{store.protocol}://{store.root}", CACHE_DIR)
    settings = {k: v for k, v in (storage_options or {}).items() if k not in SECRET_OPTIONS and k != POLICY_KEY}
    block = RemoteFileSystem(basepath=basepath, settings=settings)
    block.save(f"gcmine-results-{content_key(basepath, settings, length=12)}", overwrite=True)
    return block


def cached(task: Task, out: str, storage_options: dict | None) -> Task:
    """`task` with stage caching, its results persisted in the run root."""
    return task.with_options(
        cache_policy=STAGE_CACHE,
        persist_result=True,
        result_storage=_result_storage(out, storage_options),
        result_serializer="json",
        cache_result_in_memory=False,
    )


def _unusable(store: RunStore, result: dict, outputs: tuple[str, ...], stage: str) -> bool:
    """Whether a cache hit cannot be trusted: one of its output artifacts (the result entries
    named in `outputs`) was deleted since, or is damaged (tasks/infra/integrity.py; logged as a warning
    naming the file, which is then recomputed and replaced)."""
    for key in outputs:
        reason = artifact_damage(store, result[key])
        if reason == "missing":
            return True
        if reason is not None:
            stage_logger().warning(
                "%s: the cached %s is damaged (%s): recomputing it", stage, store.uri(result[key]), reason
            )
            return True
    return False


def run_cached(task: Task, outputs: tuple[str, ...], **kwargs: Any) -> tuple[dict, bool]:
    """Run `task(**kwargs)` (which include `out` and `storage_options`) with stage caching;
    return (result, reused). A cache hit whose output artifacts (the result entries named in
    `outputs`) were deleted since, or are damaged, is recomputed."""
    out, storage_options = kwargs["out"], kwargs.get("storage_options")
    stage = cached(task, out, storage_options)
    state = stage(**kwargs, return_state=True)
    result = state.result()
    if state.name == "Cached" and _unusable(RunStore(out, storage_options), result, outputs, task.name):
        state = stage.with_options(refresh_cache=True)(**kwargs, return_state=True)
        result = state.result()
    return result, state.name == "Cached"


def map_cached(
    task: Task, outputs: tuple[str, ...], over: str | tuple[str, ...], items: list, **fixed: Any
) -> list[tuple[dict, bool]]:
    """`task` mapped over `items` (values of its parameter `over`, or tuples of values when `over`
    names several parameters; the other parameters, `out` and `storage_options` among them, in
    `fixed`), one cached task run per item, run concurrently by the flow's task runner (threads
    or Dask workers); returns (result, reused) per item, in order."""
    from prefect import unmapped

    names = (over,) if isinstance(over, str) else tuple(over)
    rows = [(item,) if isinstance(over, str) else tuple(item) for item in items]
    if any(len(row) != len(names) for row in rows):
        raise ValueError(f"map_cached: every item must give {len(names)} values, for {names}")
    mapped = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    out, storage_options = fixed["out"], fixed.get("storage_options")
    stage = cached(task, out, storage_options)
    futures = stage.map(**mapped, **{k: unmapped(v) for k, v in fixed.items()})
    store = RunStore(out, storage_options)
    done = []
    for row, future in zip(rows, futures):
        future.wait()
        state = future.state
        result = state.result()
        if state.name == "Cached" and _unusable(
            store, result, outputs, f"{task.name}[{row[0].get('name', row[0]) if isinstance(row[0], dict) else row[0]}]"
        ):
            state = stage.with_options(refresh_cache=True)(**dict(zip(names, row)), **fixed, return_state=True)
            result = state.result()
        done.append((result, state.name == "Cached"))
    return done
