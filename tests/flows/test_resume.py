"""A run killed during scoring, restarted with the same command, scores only the missing shards
and ends with the same results as a run that was never interrupted.

Only the runs that get killed are processes of their own (`python -m gcmine.flows.cli`, SIGKILL); the
uninterrupted reference and the restarts run `main` in this process on the same session harness: the
restart finds nothing in memory, only what the killed process left on disk and on the server (each
separate process costs 15-20 s of imports on 2 busy cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.cli import main
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

SETTINGS = tiny_settings(
    "data.shard_size=2",
    "model.block_out_channels=[16, 32]",
    "score.draws=384",
    "score.batch_size=128",
    "runtime.threads=1",
)


def _argv(images: Path, out: Path, *extra: str) -> list[str]:
    argv = ["run", str(images), "--out", str(out)]
    for item in [*SETTINGS, *extra]:
        argv += ["--set", item]
    return argv


def _command(images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gcmine.flows.cli", *_argv(images, out, *extra)]


def _run_here(argv: list[str], capsys) -> str:
    """`gcmine ARGV` in this process; what it wrote to stderr (it must exit 0)."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    return err


def _env() -> dict:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session harness's server
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "images"
    for i, item in enumerate(motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=11)):
        path = root / item.label / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)
    return root


def _scores(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "typicality.parquet").sort_values("image_id").reset_index(drop=True)


def test_killed_during_scoring_resumes_missing_shards_only(prefect_harness, images, tmp_path, capsys) -> None:
    env = _env()
    reference = tmp_path / "reference"
    _run_here(_argv(images, reference), capsys)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(images, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        # Kill as soon as the first score shard has finished (its result record is persisted:
        # the records of embed, cluster and collection-map, then one of a score shard).
        while time.monotonic() < deadline and proc.poll() is None:
            if any((out / "scores").glob("part-*.parquet")) and len(list((out / ".cache").glob("*"))) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: make scoring slower"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    scored_before = {p.name.split("-")[1] for p in (out / "scores").glob("part-*.parquet")}
    assert 1 <= len(scored_before) < 4, scored_before
    assert not (out / "typicality.parquet").exists()

    resumed = _run_here(_argv(images, out), capsys)
    reused_line = next(line for line in resumed.splitlines() if "reused from earlier runs" in line)
    assert "finetune" in reused_line and "embed" in reused_line
    reused_shards = {s for s in ("00000", "00001", "00002", "00003") if f"score[part-{s}.parquet]" in reused_line}
    assert reused_shards and reused_shards <= scored_before and len(reused_shards) < 4
    pd.testing.assert_frame_equal(_scores(out), _scores(reference), check_exact=True)
    for name in ("patches", "elements"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / f"{name}.parquet"), pd.read_parquet(reference / f"{name}.parquet"), check_exact=True
        )


def test_killed_during_finetune_resumes_after_the_collection_stages(prefect_harness, images, tmp_path, capsys) -> None:
    env = _env()
    out = tmp_path / "killed-finetune"
    extra = ("train.steps=200", "score.draws=2")
    proc = subprocess.Popen(
        _command(images, out, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        # Kill once the collection stages are done and training has had a moment to start.
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "stages").glob("cluster_metrics-*.parquet"))) >= 1:
                time.sleep(1.0)
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: make training slower"
        assert not (out / "model" / "_COMPLETE.json").exists(), "training finished before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "model").exists() and not (out / "training.parquet").exists()  # nothing half-published
    assert not (out / "typicality.parquet").exists()

    resumed = _run_here(_argv(images, out, *extra), capsys)
    reused_line = next(line for line in resumed.splitlines() if "reused from earlier runs" in line)
    assert "embed" in reused_line and "cluster" in reused_line and "finetune" not in reused_line
    assert (out / "model" / "_COMPLETE.json").exists()
    assert len(pd.read_parquet(out / "training.parquet")) == 200
    assert len(pd.read_parquet(out / "typicality.parquet")) == 8
