"""The maps artifact: float32 maps stored losslessly with byte-stream-split Parquet, read back as
float32 whatever the stored float type."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gcmine.tasks.infra.artifacts import MAPS_PARQUET, maps_frame, unpack_map_rows, unpack_maps
from gcmine.tasks.infra.storage import RunStore


def _maps(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth maps with typicality-like magnitudes (1e-4 .. 1e-1), some values below float16's
    normal range, and a few exact zeros and negative zeros."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, h + 4, w + 4))
    smooth = sum(raw[:, i : i + h, j : j + w] for i in range(5) for j in range(5)) / 25
    maps = (smooth * 10.0 ** rng.uniform(-4, -1, size=(n, 1, 1))).astype(np.float32)
    maps[0, 0, :3] = [0.0, -0.0, 3e-7]
    return maps


def test_maps_round_trip_is_bit_exact_float32(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    maps = _maps(40, 12, 9, seed=0)
    ids = [f"{i:064x}" for i in range(len(maps))]
    store.write_parquet("maps/part-00000-x.parquet", maps_frame(ids, ["a", "b"] * 20, maps), **MAPS_PARQUET)
    df = store.read_parquet("maps/part-00000-x.parquet")
    back = unpack_maps(df)
    assert back.dtype == np.float32 and back.shape == maps.shape
    np.testing.assert_array_equal(back.view(np.int32), maps.view(np.int32))  # bit for bit, -0.0 included
    assert list(df["image_id"]) == ids and list(df["label"]) == ["a", "b"] * 20
    # the map column is byte-stream-split and not dictionary-encoded
    meta = pq.ParquetFile(tmp_path / "maps/part-00000-x.parquet").metadata.row_group(0)
    col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith("map."))
    assert "BYTE_STREAM_SPLIT" in col.encodings and "RLE_DICTIONARY" not in col.encodings


def test_maps_options_store_fewer_bytes_than_the_defaults(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    maps = _maps(64, 32, 32, seed=1)
    frame = maps_frame([f"{i:064x}" for i in range(64)], ["a"] * 64, maps)
    store.write_parquet("default.parquet", frame)
    store.write_parquet("maps.parquet", frame, **MAPS_PARQUET)
    default, ours = (len(store.read_bytes(n)) for n in ("default.parquet", "maps.parquet"))
    assert ours < 0.8 * default, (ours, default)
    assert ours < 64 * 32 * 32 * 4  # below the raw float32 bytes


def test_ragged_maps_round_trip_in_row_order(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    small, big = _maps(3, 4, 6, seed=2), _maps(2, 8, 8, seed=3)
    maps = [small[0], big[0], small[1], big[1], small[2]]
    ids = [f"id{i}" for i in range(5)]
    store.write_parquet("m.parquet", maps_frame(ids, list("abcab"), maps), **MAPS_PARQUET)
    df = store.read_parquet("m.parquet")
    assert list(df["image_id"]) == ids
    for got, want in zip(unpack_map_rows(df), maps):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_unpack_maps_returns_float32_for_other_stored_types(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    maps = _maps(3, 5, 5, seed=4)
    for dtype in (np.float64, np.float16):
        frame = maps_frame(["a", "b", "c"], ["x"] * 3, maps)
        frame["map"] = [m.astype(dtype) for m in frame["map"]]
        store.write_parquet("m.parquet", frame)
        back = unpack_maps(store.read_parquet("m.parquet"))
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, maps.astype(dtype).astype(np.float32))
    assert unpack_maps(pd.DataFrame(columns=["image_id", "label", "height", "width", "map"])).dtype == np.float32
