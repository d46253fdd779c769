"""Integrity checks of reused artifacts (tasks/infra/integrity.py): Parquet footers and page checksums,
model files against the sizes and hashes recorded at write time, the streamed fingerprint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from gcmine.tasks.infra.errors import DamagedArtifact
from gcmine.tasks.infra.integrity import artifact_damage, file_digest, file_records, model_damage, parquet_damage
from gcmine.tasks.infra.models import COMPLETE, model_fingerprint
from gcmine.tasks.infra.storage import RunStore


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(str(tmp_path / "run"))


def _table(n: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"image_id": [f"id{i}" for i in range(n)], "v": list(rng.random((n, 8), dtype=np.float32))})


def test_a_sound_table_passes_and_an_empty_one_too(store) -> None:
    store.write_parquet("t.parquet", _table())
    store.write_parquet("empty.parquet", _table(0))
    assert parquet_damage(store, "t.parquet") is None and parquet_damage(store, "empty.parquet") is None
    assert artifact_damage(store, "nothing.parquet") == "missing"


@pytest.mark.parametrize("keep", [100, 0.5, -10])
def test_a_truncated_table_is_damaged(store, keep) -> None:
    store.write_parquet("t.parquet", _table())
    path = store.path("t.parquet")
    data = open(path, "rb").read()
    cut = (
        keep
        if isinstance(keep, int) and keep > 0
        else int(len(data) * keep)
        if isinstance(keep, float)
        else len(data) + keep
    )
    open(path, "wb").write(data[:cut])
    assert "truncated" in parquet_damage(store, "t.parquet")
    with pytest.raises(DamagedArtifact, match=r"t\.parquet is damaged .*delete it and run the same command again"):
        store.read_parquet("t.parquet")


def test_a_flipped_byte_is_caught_by_the_page_checksums(store) -> None:
    store.write_parquet("t.parquet", _table())
    path = store.path("t.parquet")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    assert "CRC" in parquet_damage(store, "t.parquet")  # small: read whole, checksums verified
    assert parquet_damage(store, "t.parquet", full_below=0) is None  # footer only: looks whole
    with pytest.raises(DamagedArtifact, match="CRC"):
        store.read_parquet("t.parquet")  # and every read verifies the checksums


def test_a_damaged_image_shard_says_what_to_do(store) -> None:
    store.write_bytes("images/part-00000.parquet", b"PAR1 not really")
    with pytest.raises(DamagedArtifact, match="its images are decoded again from the sources"):
        store.read_parquet("images/part-00000.parquet")


def test_model_files_are_checked_against_their_records(store, tmp_path) -> None:
    model = tmp_path / "m"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "w.bin").write_bytes(bytes(range(256)) * 64)
    (model / "meta.json").write_text("{}")
    marker = {"fingerprint": model_fingerprint(model), "files": file_records(model, skip=(COMPLETE,))}
    (model / COMPLETE).write_text(json.dumps(marker))
    store.put_dir(model, "model")
    assert model_damage(store, "model", marker) is None
    weights = store.path("model/unet/w.bin")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:1000])
    assert model_damage(store, "model", marker) == f"unet/w.bin: 1000 bytes, {len(data)} recorded"
    open(weights, "wb").write(data[:-1] + b"\x00")  # same size, other bytes
    assert "unet/w.bin: its SHA-256 differs" in model_damage(store, "model", marker)
    old_style = {"fingerprint": marker["fingerprint"]}  # a marker of before file records
    assert "hash to" in model_damage(store, "model", old_style, model_fingerprint)
    open(weights, "wb").write(data)
    assert model_damage(store, "model", old_style, model_fingerprint) is None


def test_streamed_hashes_equal_whole_file_hashes(tmp_path) -> None:
    """The fingerprint of a model folder is unchanged by streaming (existing run roots keep theirs)."""
    (tmp_path / "a").mkdir()
    blob = np.random.default_rng(1).bytes(3 * 2**20 + 17)  # more than one chunk
    (tmp_path / "a" / "w.bin").write_bytes(blob)
    (tmp_path / "b.json").write_text("{}")
    whole = hashlib.sha256()
    for p in sorted(q for q in tmp_path.rglob("*") if q.is_file()):
        whole.update(p.relative_to(tmp_path).as_posix().encode())
        whole.update(p.read_bytes())
    assert model_fingerprint(tmp_path) == whole.hexdigest()[:16]
    assert file_digest(tmp_path / "a" / "w.bin") == hashlib.sha256(blob).hexdigest()
