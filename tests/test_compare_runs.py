"""benchmarks/compare_runs.py: how two runs' Parquet outputs are paired and compared (no flow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_runs)


def _write(root: Path, name: str, df: pd.DataFrame) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def test_tables_equal_renamed_and_different(tmp_path: Path) -> None:
    base = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "cluster": [0, 1, 1],
            "distance": [0.5, np.nan, 1.0],
            "map": [np.zeros(2, np.float32), np.ones(3, np.float32), np.zeros(1, np.float32)],
        }
    )
    a = _write(tmp_path, "a.parquet", base)
    assert compare_runs.compare_tables(a, _write(tmp_path, "same.parquet", base)) is None
    renamed = _write(tmp_path, "renamed.parquet", base.assign(cluster=[1, 0, 0]))
    assert (
        compare_runs.compare_tables(a, renamed) == "cluster: 3 of 3 values differ (the same partition under other ids)"
    )
    merged = _write(tmp_path, "merged.parquet", base.assign(cluster=[0, 0, 1], distance=[0.5, np.nan, 1.25]))
    diff = compare_runs.compare_tables(a, merged)
    assert "cluster: 1 of 3 values differ;" in diff and "other ids" not in diff
    assert "distance: 1 of 3 values differ (largest difference 0.25)" in diff  # NaN equals NaN
    longer = base.copy()
    longer.at[0, "map"] = np.zeros(3, np.float32)
    assert compare_runs.compare_tables(a, _write(tmp_path, "longer.parquet", longer)) == "map: list lengths differ"


def test_runs_are_paired_without_content_keys(tmp_path: Path, capsys) -> None:
    df = pd.DataFrame({"x": [1, 2]})
    for run, key in (("old", "0123456789abcdef"), ("new", "fedcba9876543210")):
        _write(tmp_path / run, "manifest.parquet", df)
        _write(tmp_path / run, f"stages/clusters-{key}.parquet", df if run == "old" else df.assign(x=[1, 3]))
    _write(tmp_path / "new", "extra.parquet", df)
    for run, t in (("old", 1.5), ("new", 2.5)):
        _write(tmp_path / run, "training.parquet", pd.DataFrame({"step": [0], "loss": [0.5], "seconds": [t]}))
    assert not compare_runs.compare_runs(tmp_path / "old", tmp_path / "new")
    out = capsys.readouterr().out
    assert "manifest.parquet" in out and "identical bytes" in out
    assert "stages/clusters.parquet" in out and "DIFFERENT: x: 1 of 2 values differ" in out
    assert "extra.parquet" in out and "only in B" in out
    assert "training.parquet" in out and "same table apart from the wall-clock column(s) seconds" in out
