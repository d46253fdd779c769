"""A run root is never broken for good nor silently wrong (issue 22): shards without a labelled
image flow through every stage; damaged cached artifacts, model weights and input shards are
detected, named and recomputed (never published); leftovers of interrupted writes are swept."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmine.flows.config import load_settings
from gcmine.flows.pipeline import run_pipeline
from gcmine.tasks.infra.integrity import model_damage
from gcmine.tasks.infra.lease import RunLease
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

TINY = tiny_settings("train.retrain_fraction=0.5", "runtime.device=cpu")


def _write(folder: Path, items, prefix: str = "") -> None:
    for i, item in enumerate(items):
        path = folder / item.label / f"{prefix}{item.label}-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)


@pytest.fixture(scope="module")
def first(prefect_harness, tmp_path_factory) -> dict:
    """One complete run on 8 labelled images (2 shards)."""
    root = tmp_path_factory.mktemp("safety")
    images = root / "images"
    _write(images, motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=5))
    out = root / "out"
    run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    return {"images": images, "out": out}


def _clone(first: dict, tmp_path: Path) -> tuple[Path, Path]:
    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(first["images"], images)
    shutil.copytree(first["out"], out)
    return images, out


# ------------------------------------------------------------------ 1. empty groups
def test_unlabelled_images_added_to_a_run_flow_through_every_stage(first, tmp_path) -> None:
    images, out = _clone(first, tmp_path)
    extra = motif_dataset(n_per_label=1, size=16, labels=("circle", "cross"), seed=77)
    for i, item in enumerate(extra):  # at the top of the folder: no folder label
        item.image.save(images / f"unlabelled-{i}.png")
    settings = [
        *TINY,
        "score.cotypicality=true",
        "baseline.enabled=true",
        "translate.enabled=true",
        "translate.steps=2",
        "translate.images_per_label=1",
    ]
    result = run_pipeline(str(images), str(out), None, load_settings(None, settings))
    assert result["summary"]["new_images"] == 2 and result["summary"]["unlabeled"] == 2
    manifest = pd.read_parquet(out / "manifest.parquet")
    new = manifest[manifest["filename"].str.startswith("unlabelled-")]
    assert set(new["shard"]) == {"part-00002.parquet"} and new["label"].isna().all()
    typ = pd.read_parquet(out / "typicality.parquet")
    assert not set(typ["image_id"]) & set(new["image_id"])  # unlabelled images are not scored...
    assert set(pd.read_parquet(out / "embeddings.parquet")["image_id"]) >= set(new["image_id"])  # ...but summarised
    assert len(pd.read_parquet(out / "patches.parquet")) > 0
    # and the next run (nothing new) reuses everything, the empty shard included
    again = run_pipeline(str(images), str(out), None, load_settings(None, settings))
    assert {"score[part-00002.parquet]", "rank[part-00002.parquet]"} <= set(again["reused"])


# ------------------------------------------------------------------ 3. damaged state
@pytest.fixture
def warnings_seen(monkeypatch) -> list[str]:
    """Warnings of the stages that check what they reuse (caching, ingest, finetune)."""
    seen: list[str] = []

    class Recorder(logging.LoggerAdapter):
        def warning(self, msg, *args, **kwargs):
            seen.append(msg % args if args else msg)

        def log(self, level, msg, *args, **kwargs):
            if level >= logging.WARNING:
                seen.append(msg % args if args else msg)

    recorder = Recorder(logging.getLogger("gcmine.test"), {})
    for module in ("gcmine.tasks.infra.caching", "gcmine.tasks.ingest", "gcmine.tasks.finetune"):
        monkeypatch.setattr(f"{module}.stage_logger", lambda *a, **k: recorder)
    return seen


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_cached_outputs_are_recomputed_named_and_never_published(first, tmp_path, warnings_seen) -> None:
    images, out = _clone(first, tmp_path)
    before = {n: pd.read_parquet(out / f"{n}.parquet") for n in ("embeddings", "typicality", "patches", "clusters")}
    damaged = [
        next((out / "stages").glob("embeddings-*.parquet")),
        next((out / "maps").glob("part-00000-*.parquet")),
        next((out / "patch_candidates").glob("part-00001-*.parquet")),
        next((out / "stages").glob("clusters-*.parquet")),
    ]
    for path in damaged:
        _truncate(path)
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    reused = set(result["reused"])
    assert not {"embed", "cluster", "score[part-00000.parquet]", "rank[part-00001.parquet]"} & reused
    assert {"finetune", "score[part-00001.parquet]", "rank[part-00000.parquet]"} <= reused  # the sound ones are kept
    for path in damaged:
        assert any(path.name in w and "damaged" in w and "recomputing" in w for w in warnings_seen), path.name
        assert path.stat().st_size > 100  # replaced
    for name, table in before.items():  # what is published is whole, and what it was
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), table)


def test_truncated_model_weights_are_not_reused(first, tmp_path, warnings_seen) -> None:
    images, out = _clone(first, tmp_path)
    weights = next((out / "model" / "unet").glob("*.safetensors"))
    _truncate(weights, 1000)
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    assert "finetune" not in result["reused"]
    assert any("model folder" in w and "unet/" + weights.name in w and "damaged" in w for w in warnings_seen)
    assert weights.stat().st_size > 1000
    marker = json.loads((out / "model" / "_COMPLETE.json").read_text())
    assert model_damage(RunStore(str(out)), "model", marker) is None


def test_a_damaged_image_shard_is_decoded_again_from_the_sources(first, tmp_path, warnings_seen) -> None:
    images, out = _clone(first, tmp_path)
    _truncate(out / "images" / "part-00001.parquet")
    result = run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    assert any("images/part-00001.parquet" in w and "decoded again" in w for w in warnings_seen)
    assert result["summary"]["new_images"] == 4 and result["summary"]["ok"] == 8
    _assert_consistent(out)


# ------------------------------------------------------------------ 5. leftovers
def test_leftovers_of_interrupted_writes_are_swept(first, tmp_path, monkeypatch) -> None:
    images, out = _clone(first, tmp_path)
    ours = [out / f"typicality.parquet.tmp-{'a' * 32}", out / "maps" / f"part-00000-x.parquet.tmp-{'b' * 32}"]
    for p in ours:
        p.write_bytes(b"half")
    for name in (f"model.tmp-{'c' * 32}", f"model.old-{'d' * 32}"):
        (out / name / "unet").mkdir(parents=True)
        (out / name / "unet" / "w.bin").write_bytes(b"w")
        ours.append(out / name)
    fresh = out / f"elements.parquet.tmp-{'e' * 32}"  # being written right now (by whom, we cannot know): kept
    foreign = out / "notes.tmp-mine"  # not a name gcmine writes: kept
    fresh.write_bytes(b"x")
    foreign.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for p in ours:
        os.utime(p, (hour_ago, hour_ago))
    # a scratch folder of a process that died before removing it, in a private temp folder
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_scratch = scratch_root / f"gcmine-scratch-download-{dead.pid}-abc123"
    live_scratch = scratch_root / f"gcmine-scratch-download-{os.getpid()}-def456"
    for d in (dead_scratch, live_scratch):
        (d / "unet").mkdir(parents=True)
        os.utime(d, (hour_ago, hour_ago))
    run_pipeline(str(images), str(out), None, load_settings(None, TINY))
    assert not [p for p in ours if p.exists()]
    assert fresh.exists() and foreign.exists() and live_scratch.exists() and not dead_scratch.exists()


# ------------------------------------------------------------------ 2. concurrent runs
def _assert_consistent(out: Path) -> None:
    """Every shard the shard list names holds exactly its images; every live labelled image is scored."""
    meta = json.loads((out / "images" / "_shards.json").read_text())
    for shard in meta["shards"]:
        assert sorted(pd.read_parquet(out / "images" / shard["name"])["image_id"]) == sorted(shard["ids"]), shard[
            "name"
        ]
    manifest = pd.read_parquet(out / "manifest.parquet")
    live = manifest[(manifest["status"] == "ok") & manifest["label"].notna()]
    assert set(pd.read_parquet(out / "typicality.parquet")["image_id"]) == set(live["image_id"])


def test_concurrent_incremental_runs_are_serialised_and_a_third_run_is_consistent(first, tmp_path, monkeypatch) -> None:
    """Two incremental runs (different new images) start together into one root. Without a lease
    both read the old shard list and both write images/part-00002.parquet and the list (a barrier
    in ingest makes them meet there); with it, the second run waits for the first to finish.
    Every write into the root is recorded with its flow run: the two runs' writes never interleave."""
    from prefect.runtime import flow_run

    import gcmine.tasks.ingest

    base, out = _clone(first, tmp_path)
    folders = {}
    for name, seed in (("a", 11), ("b", 12)):
        folder = tmp_path / f"images-{name}"
        shutil.copytree(base, folder)
        _write(
            folder, motif_dataset(n_per_label=1, size=16, labels=("circle", "cross"), seed=seed), prefix=f"new-{name}-"
        )
        folders[name] = folder
    meet = threading.Barrier(2)
    real_previous = gcmine.tasks.ingest._previous_run

    def previous_run(*args, **kwargs):
        found = real_previous(*args, **kwargs)
        try:
            meet.wait(timeout=8)  # both runs hold the old state here... unless one waits for the lease
        except threading.BrokenBarrierError:
            pass
        return found

    writes: list[tuple[str, float]] = []
    real_write = RunStore.write_bytes

    def write_bytes(self, rel, data):
        if self.root == str(out):
            writes.append((str(flow_run.id), time.monotonic()))
        return real_write(self, rel, data)

    monkeypatch.setattr(gcmine.tasks.ingest, "_previous_run", previous_run)
    monkeypatch.setattr(RunStore, "write_bytes", write_bytes)
    settings = load_settings(None, [*TINY, "storage.lease=wait", "storage.lease_wait=600"])
    results, errors = {}, []

    def run(name: str) -> None:
        try:
            results[name] = run_pipeline(str(folders[name]), str(out), None, settings)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(results) == {"a", "b"}
    spans = {}
    for run_id, at in writes:
        lo, hi = spans.get(run_id, (at, at))
        spans[run_id] = (min(lo, at), max(hi, at))
    (_, end_first), (start_second, _) = sorted(spans.values())
    assert len(spans) == 2 and end_first < start_second  # one writer at a time
    _assert_consistent(out)
    # a third run over everything: consistent, no error
    monkeypatch.undo()
    merged = tmp_path / "images-all"
    shutil.copytree(folders["a"], merged)
    shutil.copytree(folders["b"], merged, dirs_exist_ok=True)
    third = run_pipeline(str(merged), str(out), None, load_settings(None, TINY))
    assert third["summary"]["ok"] == 12
    _assert_consistent(out)


def test_a_run_into_a_busy_root_refuses_with_one_line_naming_the_holder(first, tmp_path, capsys) -> None:
    images, out = _clone(first, tmp_path)
    manifest = (out / "manifest.parquet").read_bytes()
    holder = RunLease(RunStore(str(out)), flow_run_id="the-scheduled-run", expiry=60)
    holder.acquire()
    try:
        argv = ["run", str(images), "--out", str(out), "--set", "storage.lease=refuse"]
        for item in TINY:
            argv += ["--set", item]
        assert main(argv) == 1
    finally:
        holder.release()
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gcmine: ")]
    assert (
        len(line) == 1
        and "is being written by flow run the-scheduled-run" in line[0]
        and "storage.lease=refuse" in line[0]
    )
    assert (out / "manifest.parquet").read_bytes() == manifest  # nothing touched
