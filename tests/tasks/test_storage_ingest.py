"""Tests of the run-root store and of the ingest stage (without a Prefect run)."""

from __future__ import annotations

import io
import os
import posixpath

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmine.tasks.infra.artifacts import MANIFEST, MANIFEST_COLUMNS
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import InputError, ingest_images, match_labels, read_labels
from gcmodels.config import DataConfig
from gcmodels.data.images import image_id


# ================================================================== RunStore
def test_parquet_round_trip(tmp_path) -> None:
    store = RunStore(str(tmp_path / "run"))
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [b"\x00", b"\x01", b""], "d": [0.5, np.nan, 2.0]})
    store.write_parquet("tables/t.parquet", df)
    back = store.read_parquet("tables/t.parquet")
    pd.testing.assert_frame_equal(back, df)
    assert store.read_parquet("tables/t.parquet", columns=["a"]).columns.tolist() == ["a"]
    store.write_parquet("tables/u.parquet", df.iloc[:1])
    both = store.read_parts("tables", ["t.parquet", "u.parquet"])
    assert len(both) == 4
    assert store.read_parts("tables", [], columns=["a"]).columns.tolist() == ["a"]


def test_bytes_and_json_round_trip(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    store.write_bytes("a/b/c.bin", b"\x00\xffdata")
    assert store.read_bytes("a/b/c.bin") == b"\x00\xffdata"
    assert store.exists("a/b/c.bin") and not store.exists("a/b/missing.bin")
    obj = {"k": [1, 2.5, None], "ü": "é", "nested": {"x": True}}
    store.write_json("run.json", obj)
    assert store.read_json("run.json") == obj
    store.write_text("t.txt", "héllo")
    assert store.read_bytes("t.txt") == "héllo".encode()
    # overwrite
    store.write_bytes("a/b/c.bin", b"new")
    assert store.read_bytes("a/b/c.bin") == b"new"


def test_path_stays_inside_root(tmp_path) -> None:
    store = RunStore(str(tmp_path / "run"))
    root = store.root
    assert store.path("a/b.txt") == posixpath.join(root, "a/b.txt")
    assert store.path("./a//b.txt") == posixpath.join(root, "a/b.txt")
    assert store.path("a\\b.txt") == posixpath.join(root, "a/b.txt")
    for rel in ["../x", "a/../../x", "/abs/../..", "..", "/etc/passwd"]:
        try:
            p = store.path(rel)
        except ValueError:
            continue
        assert p.startswith(root + "/"), (rel, p)


@pytest.mark.parametrize("rel", ["", ".", "/", "/abs/../..", "..", "./"])
def test_path_refuses_empty_or_root_names(tmp_path, rel: str) -> None:
    store = RunStore(str(tmp_path))
    with pytest.raises(ValueError, match="not a relative path inside the run root"):
        store.path(rel)


@pytest.mark.parametrize("rel", ["../x", "a/../../x"])
def test_path_refuses_names_climbing_out_of_the_root(tmp_path, rel: str) -> None:
    store = RunStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.path(rel)


def test_uri_is_file_uri(tmp_path) -> None:
    store = RunStore(str(tmp_path))
    assert store.uri("report/index.html").startswith("file://")
    assert store.uri("report/index.html").endswith("/report/index.html")


def test_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    store = RunStore(str(tmp_path / "run"))
    for i in range(3):
        store.write_bytes("d/x.bin", bytes([i]) * 10)
        store.write_json("d/y.json", {"i": i})
        store.write_parquet("d/z.parquet", pd.DataFrame({"i": [i]}))
    assert sorted(os.listdir(tmp_path / "run" / "d")) == ["x.bin", "y.json", "z.parquet"]


def test_put_dir_replaces_a_folder(tmp_path) -> None:
    store = RunStore(str(tmp_path / "run"))
    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    (first / "a.txt").write_text("A")
    (first / "sub" / "b.txt").write_text("B")
    store.put_dir(first, "model")
    assert store.read_bytes("model/a.txt") == b"A" and store.read_bytes("model/sub/b.txt") == b"B"
    second = tmp_path / "second"
    second.mkdir()
    (second / "c.txt").write_text("C")
    store.put_dir(second, "model")
    model = tmp_path / "run" / "model"
    assert sorted(os.listdir(model)) == ["c.txt"]
    assert sorted(os.listdir(tmp_path / "run")) == ["model"]  # no staging or old copies left
    with store.local_copy("model") as found:  # a local root: the folder itself, left in place
        assert found == model
    assert model.is_dir()
    with pytest.raises(FileNotFoundError):
        with store.local_copy("nothing"):
            pass


# ================================================================== ingest
def _png(colour=(255, 0, 0), size=(12, 10), seed: int | None = None) -> bytes:
    if seed is None:
        img = Image.new("RGB", size, colour)
    else:
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _ingest(images, labels=None, tmp_path=None, **data_kw):
    out = tmp_path / "run"
    store = RunStore(str(out))
    summary = ingest_images(
        str(images), None if labels is None else str(labels), store, DataConfig(**data_kw), logger=None
    )
    return summary, store


def test_folder_per_label(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "cat" / "c1.png", _png(seed=1, size=(20, 14)))
    _write(imgs / "cat" / "c2.png", _png(seed=2))
    _write(imgs / "dog" / "d1.png", _png(seed=3))
    _write(imgs / "dog" / "notes.txt", b"not an image")  # ignored: wrong extension
    summary, store = _ingest(imgs, tmp_path=tmp_path, resolution=8)
    manifest = store.read_parquet(MANIFEST)
    assert manifest.columns.tolist()[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    assert len(manifest) == 3
    assert manifest["status"].tolist() == ["ok"] * 3
    assert manifest["label"].tolist() == ["cat", "cat", "dog"]
    assert manifest["filename"].tolist() == ["c1.png", "c2.png", "d1.png"]
    assert manifest["source"].tolist() == [
        str(imgs / "cat" / "c1.png"),
        str(imgs / "cat" / "c2.png"),
        str(imgs / "dog" / "d1.png"),
    ]
    assert manifest["width"].tolist() == [20, 12, 12] and manifest["height"].tolist() == [14, 10, 10]
    assert manifest["image_id"].tolist() == [
        image_id((imgs / "cat" / "c1.png").read_bytes()),
        image_id(_png(seed=2)),
        image_id(_png(seed=3)),
    ]
    assert manifest["reason"].isna().all()
    assert store.exists("images/part-00000.parquet")
    part = store.read_parquet("images/part-00000.parquet")
    assert part["image_id"].tolist() == manifest["image_id"].tolist()
    assert "label" not in part.columns  # labels live in the manifest only: relabelling never rewrites a shard
    for png in part["png"]:
        assert Image.open(io.BytesIO(png)).size == (8, 8)
    assert summary["images"] == 3 and summary["ok"] == 3 and summary["rejected"] == 0
    assert summary["labels"] == {"cat": 2, "dog": 1}
    assert [s["name"] for s in summary["shards"]] == ["part-00000.parquet"]
    assert summary["unlabeled"] == 0 and summary["missing_files"] == 0


def test_flat_folder_is_unlabeled(tmp_path) -> None:
    imgs = tmp_path / "flat"
    _write(imgs / "a.png", _png(seed=1))
    _write(imgs / "b.PNG", _png(seed=2))
    summary, store = _ingest(imgs, tmp_path=tmp_path, resolution=8)
    manifest = store.read_parquet(MANIFEST)
    assert manifest["label"].isna().all()
    assert summary["unlabeled"] == 2 and summary["labels"] == {}


def test_labels_csv_by_relative_path_and_unique_basename(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a" / "x1.png", _png(seed=1))
    _write(imgs / "a" / "x2.png", _png(seed=2))
    _write(imgs / "b" / "y1.png", _png(seed=3))
    _write(imgs / "b" / "x2.png", _png(seed=4))  # x2.png is not a unique basename
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\na/x1.png, cat \ny1.png,dog\nx2.png,bird\nnothere.png,cat\n")
    summary, store = _ingest(imgs, labels, tmp_path=tmp_path, resolution=8)
    manifest = store.read_parquet(MANIFEST).set_index("source")
    lab = {os.path.relpath(s, imgs).replace(os.sep, "/"): v for s, v in manifest["label"].items()}
    assert lab["a/x1.png"] == "cat"  # relative path, label stripped
    assert lab["b/y1.png"] == "dog"  # unique basename
    assert pd.isna(lab["a/x2.png"]) and pd.isna(lab["b/x2.png"])  # ambiguous basename: no label
    assert summary["missing_files"] == 2  # x2.png (ambiguous) and nothere.png matched no image
    assert "nothere.png" in summary["missing_examples"]
    assert summary["unlabeled"] == 2
    assert summary["labels"] == {"cat": 1, "dog": 1}


def test_label_row_naming_a_missing_file(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "p.png", _png(seed=1))
    _write(imgs / "q.png", _png(seed=2))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\np.png,cat\nq.png,dog\ngone.png,cat\n")
    summary, _ = _ingest(imgs, labels, tmp_path=tmp_path, resolution=8)
    assert summary["missing_files"] == 1 and summary["missing_examples"] == ["gone.png"]
    assert summary["ok"] == 2 and summary["labels"] == {"cat": 1, "dog": 1}


def test_labels_matching_nothing_is_an_error(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "p.png", _png(seed=1))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\nzzz.png,cat\n")
    with pytest.raises(InputError, match="matches none"):
        _ingest(imgs, labels, tmp_path=tmp_path)


def test_corrupt_file_is_rejected_rest_ok(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "cat" / "good1.png", _png(seed=1))
    good = _png(seed=2, size=(40, 40))
    _write(imgs / "cat" / "half.png", good[: len(good) // 2])
    _write(imgs / "cat" / "page.jpg", b"<html><body>404</body></html>")
    _write(imgs / "dog" / "good2.png", _png(seed=3))
    summary, store = _ingest(imgs, tmp_path=tmp_path, resolution=8)
    m = store.read_parquet(MANIFEST).set_index("filename")
    assert m.loc["half.png", "status"] == "rejected" and m.loc["half.png", "reason"].startswith("truncated or corrupt")
    assert m.loc["page.jpg", "status"] == "rejected" and "HTML" in m.loc["page.jpg", "reason"]
    assert m.loc["good1.png", "status"] == "ok" and m.loc["good2.png", "status"] == "ok"
    assert pd.isna(m.loc["half.png", "width"])
    assert summary["ok"] == 2 and summary["rejected"] == 2
    assert summary["rejected_by_reason"] == {"truncated or corrupt": 1, "not an image": 1}
    assert pd.isna(m.loc["half.png", "shard"]) and m.loc["good1.png", "shard"] == "part-00000.parquet"
    part = store.read_parquet("images/part-00000.parquet")
    assert len(part) == 2


def test_duplicate_bytes_second_rejected(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    data = _png(seed=5)
    _write(imgs / "a.png", data)
    _write(imgs / "b.png", data)
    _write(imgs / "c.png", _png(seed=6))
    summary, store = _ingest(imgs, tmp_path=tmp_path, resolution=8)
    m = store.read_parquet(MANIFEST).set_index("filename")
    assert m.loc["a.png", "status"] == "ok"
    assert m.loc["b.png", "status"] == "rejected"
    assert m.loc["b.png", "reason"] == f"duplicate: same content as {imgs / 'a.png'}"
    assert m.loc["a.png", "image_id"] == m.loc["b.png", "image_id"]
    assert summary["rejected"] == 1 and list(summary["rejected_by_reason"].values()) == [1]
    assert summary["ok"] == 2
    assert len(store.read_parquet("images/part-00000.parquet")) == 2


def test_labels_file_without_label_column(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a.png", _png(seed=1))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class\na.png,cat\n")
    with pytest.raises(InputError) as err:
        _ingest(imgs, labels, tmp_path=tmp_path)
    msg = str(err.value)
    assert str(labels) in msg and "'label'" in msg and "'class'" in msg and "'filename'" in msg


@pytest.mark.parametrize("content", ["", "filename,label\n"])
def test_empty_labels_file(tmp_path, content: str) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a.png", _png(seed=1))
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(InputError) as err:
        _ingest(imgs, labels, tmp_path=tmp_path)
    assert str(labels) in str(err.value)


def test_missing_labels_file(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a.png", _png(seed=1))
    with pytest.raises(InputError, match="does not exist"):
        _ingest(imgs, tmp_path / "nope.csv", tmp_path=tmp_path)


def test_read_labels_repeated_rows_add_labels(tmp_path) -> None:
    """Repeated rows of one file name give the image the union of their labels (multi-label
    images); the same label twice is one label."""
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\na.png,cat\nb.png,dog\na.png,dog\na.png,cat\nc.png,\nc.png,bird\n")
    table = read_labels(str(labels))
    assert table["filename"].tolist() == ["a.png", "b.png", "c.png"]
    assert table["label"].tolist() == ["cat|dog", "dog", "bird"]
    labels.write_text("filename,label\na.png,cat\na.png,cat\nb.png,\n")
    table = read_labels(str(labels))
    assert table["filename"].tolist() == ["a.png", "b.png"]
    assert table["label"].tolist()[0] == "cat" and pd.isna(table["label"].tolist()[1])


def test_read_labels_separator(tmp_path) -> None:
    """Several labels in one value: split on data.label_separator (default |), cleaned, sorted,
    blanks dropped; another separator; '' keeps the value whole; a label holding | under another
    separator is an error naming the file, the row and the setting."""
    labels = tmp_path / "labels.csv"
    labels.write_text('filename,label\na.png,nodule | effusion\nb.png,"effusion|"\nc.png,|\nd.png,x;y\n')
    table = read_labels(str(labels))
    assert table["label"].tolist()[:2] == ["effusion|nodule", "effusion"]
    assert pd.isna(table["label"].tolist()[2]) and table["label"].tolist()[3] == "x;y"
    labels.write_text("filename,label\na.png,x;y\nb.png,x\n")
    assert read_labels(str(labels), separator=";")["label"].tolist() == ["x|y", "x"]
    labels.write_text("filename,label\na.png,x\nb.png,10|20\n")
    with pytest.raises(
        InputError, match=r"labels.csv, row 3, column 'label': label '10\|20' contains '\|'.*data.label_separator"
    ):
        read_labels(str(labels), separator=";")
    with pytest.raises(InputError, match="row 3"):
        read_labels(str(labels), separator="")


def test_multi_label_images_in_the_manifest(tmp_path) -> None:
    """The manifest keeps each image's labels as one canonical string; the summary counts images
    per single label (an image of two labels counts for both) and the multi-label images."""
    imgs = tmp_path / "imgs"
    for i in range(4):
        _write(imgs / f"{i}.png", _png(seed=i))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n0.png,cat|dog\n1.png,dog\n2.png,cat\n2.png,bird\n3.png,cat\n")
    summary, store = _ingest(imgs, labels, tmp_path=tmp_path)
    manifest = store.read_parquet(MANIFEST).set_index("filename")
    assert manifest["label"].to_dict() == {"0.png": "cat|dog", "1.png": "dog", "2.png": "bird|cat", "3.png": "cat"}
    assert summary["labels"] == {"bird": 1, "cat": 3, "dog": 2} and summary["multi_label"] == 2
    # a folder name and a manifest column split the same way
    other = tmp_path / "folders"
    _write(other / "cat|dog" / "a.png", _png(seed=7))
    _write(other / "cat" / "b.png", _png(seed=8))
    summary, store = _ingest(other, tmp_path=tmp_path / "f")
    assert sorted(store.read_parquet(MANIFEST)["label"]) == ["cat", "cat|dog"]
    assert summary["labels"] == {"cat": 2, "dog": 1}


def test_match_labels_helper() -> None:
    table = pd.DataFrame({"filename": ["x/a.png", "b.png", "c.png"], "label": ["1", "2", "3"]})
    out, missing = match_labels(["x/a.png", "y/a.png", "z/b.png", "c.png", "w/c.png"], table)
    # c.png matches the relative path 'c.png' exactly; 'w/c.png' has a non-unique basename
    assert out == ["1", None, "2", "3", None]
    assert missing == []


def test_csv_manifest_with_source_column(tmp_path) -> None:
    _write(tmp_path / "pics" / "one.png", _png(seed=1))
    _write(tmp_path / "pics" / "sub" / "two.png", _png(seed=2))
    manifest_csv = tmp_path / "list.csv"
    manifest_csv.write_text("source,label\npics/one.png,cat\npics/sub/two.png,\n")
    summary, store = _ingest(manifest_csv, tmp_path=tmp_path, resolution=8)
    m = store.read_parquet(MANIFEST)
    assert m["status"].tolist() == ["ok", "ok"]
    assert m["filename"].tolist() == ["one.png", "two.png"]
    assert m["label"].tolist()[0] == "cat" and m["label"].isna().tolist() == [False, True]
    assert os.path.exists(m["source"][1]) and m["source"][1].endswith("pics/sub/two.png")
    assert summary["labels"] == {"cat": 1} and summary["unlabeled"] == 1


def test_csv_manifest_with_missing_file(tmp_path) -> None:
    _write(tmp_path / "one.png", _png(seed=1))
    manifest_csv = tmp_path / "list.csv"
    manifest_csv.write_text("source\none.png\nmissing.png\n")
    summary, store = _ingest(manifest_csv, tmp_path=tmp_path, resolution=8)
    m = store.read_parquet(MANIFEST).set_index("filename")
    assert m.loc["missing.png", "status"] == "rejected" and m.loc["missing.png", "reason"] == "file not found"
    assert summary["ok"] == 1


def test_manifest_without_source_column(tmp_path) -> None:
    manifest_csv = tmp_path / "list.csv"
    manifest_csv.write_text("path,label\na.png,cat\n")
    with pytest.raises(InputError, match="'source' or 'filename'"):
        _ingest(manifest_csv, tmp_path=tmp_path)


def test_folder_without_images(tmp_path) -> None:
    imgs = tmp_path / "empty"
    _write(imgs / "readme.txt", b"hello")
    with pytest.raises(InputError) as err:
        _ingest(imgs, tmp_path=tmp_path)
    assert str(imgs) in str(err.value) and "no image files" in str(err.value)


def test_images_path_that_does_not_exist_or_is_not_a_manifest(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        _ingest(tmp_path / "nowhere", tmp_path=tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder nor"):
        _ingest(tmp_path / "file.txt", tmp_path=tmp_path)


def test_all_rejected_is_an_error(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a.png", b"")
    _write(imgs / "b.png", b"garbage")
    with pytest.raises(InputError, match="no usable image"):
        _ingest(imgs, tmp_path=tmp_path)


def test_shards_split_by_shard_size(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    for i in range(5):
        _write(imgs / f"im{i}.png", _png(seed=10 + i))
    _write(imgs / "im2b.png", b"broken")  # rejected rows take no shard slot
    summary, store = _ingest(imgs, tmp_path=tmp_path, resolution=8, shard_size=2)
    assert [s["name"] for s in summary["shards"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    sizes = [len(store.read_parquet(f"images/{s}")) for s in [x["name"] for x in summary["shards"]]]
    assert sizes == [2, 2, 1]
    m = store.read_parquet(MANIFEST)
    ok = m[m["status"] == "ok"]
    assert ok["shard"].tolist() == ["part-00000.parquet"] * 2 + ["part-00001.parquet"] * 2 + ["part-00002.parquet"]
    assert m.loc[m["status"] != "ok", "shard"].isna().all()
    # each shard holds exactly the images the manifest assigns to it
    for i, name in enumerate(x["name"] for x in summary["shards"]):
        part = store.read_parquet(f"images/{name}")
        assert part["image_id"].tolist() == ok.loc[ok["shard"] == f"part-{i:05d}.parquet", "image_id"].tolist()


def test_all_rejected_still_writes_the_manifest(tmp_path) -> None:
    imgs = tmp_path / "imgs"
    _write(imgs / "a.png", b"")
    with pytest.raises(InputError, match="no usable image"):
        _ingest(imgs, tmp_path=tmp_path)
    manifest = pd.read_parquet(next(tmp_path.rglob("manifest.parquet")))
    assert list(manifest["status"]) == ["rejected"] and manifest["reason"].iloc[0] == "empty file: 0 bytes"


def test_a_write_failing_midway_leaves_the_old_artifact(tmp_path, monkeypatch) -> None:
    store = RunStore(str(tmp_path))
    store.write_parquet("t.parquet", pd.DataFrame({"a": [1, 2]}))
    good = (tmp_path / "t.parquet").read_bytes()

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        store.write_parquet("t.parquet", pd.DataFrame({"a": [3, 4, 5]}))
    assert (tmp_path / "t.parquet").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
    with pytest.raises(OSError):
        store.write_bytes("new/x.bin", b"abc")
    assert not (tmp_path / "new" / "x.bin").exists() and not list((tmp_path / "new").iterdir())


def test_put_dir_failing_midway_keeps_the_old_folder(tmp_path, monkeypatch) -> None:
    store = RunStore(str(tmp_path / "run"))
    src = tmp_path / "m1"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "w.bin").write_bytes(b"old")
    store.put_dir(src, "model")
    src2 = tmp_path / "m2"
    (src2 / "unet").mkdir(parents=True)
    (src2 / "unet" / "w.bin").write_bytes(b"new")
    import shutil

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", fail)
    with pytest.raises(
        OSError, match=r"writing folder file://.*/model failed: .*No space left on device.*previous version"
    ):
        store.put_dir(src2, "model")
    assert (tmp_path / "run" / "model" / "unet" / "w.bin").read_bytes() == b"old"


def test_short_side_working_images_keep_the_aspect_ratio(tmp_path) -> None:
    """data.resize=short_side (the SD path): the short side becomes the resolution, the long side
    keeps the aspect ratio in multiples of 8; read_images gives them at their own size (ragged) or
    as square views; a change of policy re-decodes rather than reusing the shards."""
    from gcmine.tasks.infra.artifacts import SHARDS_META, read_images

    imgs = tmp_path / "imgs"
    _write(imgs / "wide.png", _png(seed=1, size=(60, 20)))  # 3:1 -> 48 x 16
    _write(imgs / "tall.png", _png(seed=2, size=(20, 30)))  # 2:3 -> 16 x 24
    _write(imgs / "square.png", _png(seed=3, size=(40, 40)))  # -> 16 x 16
    _, store = _ingest(imgs, tmp_path=tmp_path, resolution=16, resize="short_side")
    assert store.read_json(SHARDS_META)["resize"] == "short_side"
    manifest = store.read_parquet(MANIFEST).set_index("filename")
    meta, ragged = read_images(store, ["part-00000.parquet"], ragged=True)
    sizes = {manifest.index[manifest["image_id"] == iid][0]: arr.shape for iid, arr in zip(meta["image_id"], ragged)}
    assert sizes == {"wide.png": (16, 48, 3), "tall.png": (24, 16, 3), "square.png": (16, 16, 3)}
    _, square = read_images(store, ["part-00000.parquet"])
    assert square.shape == (3, 16, 16, 3)
    fingerprint = store.read_json(SHARDS_META)["shards"][0]["fingerprint"]
    _ingest(imgs, tmp_path=tmp_path, resolution=16, resize="square")  # back to square: new shards, new fingerprints
    shards = store.read_json(SHARDS_META)
    assert shards["resize"] == "square" and shards["shards"][0]["fingerprint"] != fingerprint
    _, square = read_images(store, [shards["shards"][-1]["name"]])
    assert square.shape == (3, 16, 16, 3)


def test_squares_keep_their_shards_and_keys_under_either_resize_policy(tmp_path) -> None:
    """A square original has the same working image under data.resize=square and short_side: a
    collection of squares keeps its shards, fingerprints and images key when the policy changes;
    a shard holding an oblong image is decoded again, under a new fingerprint."""
    from gcmine.tasks.infra.artifacts import SHARDS_META

    imgs = tmp_path / "imgs"
    for i in range(3):
        _write(imgs / f"sq{i}.png", _png(seed=10 + i, size=(30, 30)))
    first, store = _ingest(imgs, tmp_path=tmp_path, resolution=16, resize="square")
    again, _ = _ingest(imgs, tmp_path=tmp_path, resolution=16, resize="short_side")
    assert again["new_images"] == 0 and again["reused_shards"] == 1
    assert again["shards"] == first["shards"] and again["images_key"] == first["images_key"]
    _write(imgs / "wide.png", _png(seed=20, size=(60, 30)))
    wide, _ = _ingest(imgs, tmp_path=tmp_path, resolution=16, resize="short_side")
    assert wide["new_images"] == 1 and wide["reused_shards"] == 1
    back, _ = _ingest(
        imgs, tmp_path=tmp_path, resolution=16, resize="square"
    )  # square again: the oblong image's shard is redone
    assert back["new_images"] == 1 and back["reused_shards"] == 1
    keys = {s["name"]: s["fingerprint"] for s in back["shards"]}
    assert keys[first["shards"][0]["name"]] == first["shards"][0]["fingerprint"]
    assert back["images_key"] != wide["images_key"]
    assert store.read_json(SHARDS_META)["resize"] == "square"
