"""Unusable label files and settings: a clear error naming the file, row and column (labels) or
the field (settings), before any work; recoverable label problems: data kept as data."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from gcmine.flows.cli import main
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images, read_labels
from gcmodels.config import DataConfig


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (20 * i, 100, 255 - 20 * i)).save(buf, format="PNG")
        (folder / f"im{i}.png").write_bytes(buf.getvalue())
        names.append(f"im{i}.png")
    return names


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("file,label\na.png,x\n", ["lacks column(s) ['filename']", "'file'"]),
        ("filename,lab\na.png,x\n", ["lacks column(s) ['label']"]),
        ("name;class\na.png;x\n", ["lacks column(s) ['filename', 'label']"]),
        ("", ["is empty"]),
        ("filename,label\n", ["has no rows"]),
        ("filename,label\na.png,x\n,y\nb.png,z\n  ,w\n", ["row(s) 3, 5", "column 'filename'", "empty file name"]),
        ('filename,label\na.png,"x\n', ["could not be read as CSV"]),
    ],
)
def test_unusable_labels_files_name_file_row_column(tmp_path, content: str, needles: list[str]) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(InputError) as err:
        read_labels(str(labels))
    msg = str(err.value)
    assert str(labels) in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_labels_path_that_is_a_folder(tmp_path) -> None:
    (tmp_path / "labels.csv").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_labels(str(tmp_path / "labels.csv"))


def test_labels_are_normalised_text_not_paths(tmp_path) -> None:
    nfd = unicodedata.normalize("NFD", "café")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"filename": ["a.png", "b.png", "c.png", "d.png"], "label": [nfd, "café ", 7, "a/../../b"]}).to_csv(
        labels, index=False
    )
    notes: list[str] = []
    table = read_labels(str(labels), notes=notes)
    assert list(table["label"]) == ["café", "café", "7", "a/../../b"] and not notes


def test_more_labels_than_max_labels(tmp_path) -> None:
    names = _images(tmp_path / "imgs", 3)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"filename": names, "label": ["a", "b", "c"]}).to_csv(labels, index=False)
    store = RunStore(str(tmp_path / "out"))
    with pytest.raises(InputError) as err:
        ingest_images(str(tmp_path / "imgs"), str(labels), store, DataConfig(resolution=16, max_labels=2))
    assert (
        "3 distinct labels" in str(err.value)
        and "data.max_labels = 2" in str(err.value)
        and str(labels) in str(err.value)
    )
    summary = ingest_images(str(tmp_path / "imgs"), str(labels), store, DataConfig(resolution=16, max_labels=3))
    assert summary["labels"] == {"a": 1, "b": 1, "c": 1}


def test_min_side_and_max_aspect_are_settings(tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("RGB", (300, 10), (1, 2, 3)).save(folder / "banner.png")
    Image.new("RGB", (16, 16), (5, 5, 5)).save(folder / "ok.png")
    default = ingest_images(str(folder), None, RunStore(str(tmp_path / "o1")), DataConfig(resolution=16))
    assert default["rejected_by_reason"] == {"too small": 1, "too elongated": 1}
    lenient = ingest_images(
        str(folder), None, RunStore(str(tmp_path / "o2")), DataConfig(resolution=16, min_side=1, max_aspect=None)
    )
    assert lenient["ok"] == 3 and lenient["rejected"] == 0


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["train.bogus=1"], ["train.bogus", "unknown setting"]),
        (["score.draws=many"], ["score.draws", "'many'"]),
        (["rank.patch_size=40", "data.resolution=32"], ["rank.patch_size (40)", "data.resolution=32"]),
        (["rank.per_image=0"], ["rank.per_image"]),
        (["rank.elements=0"], ["rank.elements"]),
        (["rank.per_label=0"], ["rank.per_label"]),
        (["report.elements_per_label=0"], ["report.elements_per_label"]),
        (["score.t_max=1.5"], ["score.t_max", "1.5"]),
        (["score.t_min=-0.2"], ["score.t_min", "-0.2"]),
        (["rank.feature_t=2"], ["rank.feature_t"]),
        (["rank.feature_pool=max"], ["rank.feature_pool", "'mean'", "'typical'"]),
        (["rank.clustering=dbscan"], ["rank.clustering", "'kmeans'", "'ward'"]),
        (["rank.per_label=40000"], ["rank.per_label patches: 40000 need about 6.0 GiB", "set rank.clustering=kmeans"]),
        (["data.min_side=0"], ["data.min_side"]),
        (["data.max_aspect=0.5"], ["data.max_aspect"]),
        (["data.max_labels=0"], ["data.max_labels"]),
    ],
)
def test_cli_refuses_bad_settings_before_any_work(tmp_path, capsys, overrides: list[str], needles: list[str]) -> None:
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "no-such-images"), "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_cli_refuses_bad_yaml_config(tmp_path, capsys) -> None:
    cfg = tmp_path / "gcmine.yaml"
    cfg.write_text("score:\n  draws: 8\n  drawz: 4\ntrain:\n  steps: [1, 2]\n")
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "score.drawz" in err and "unknown setting" in err and "train.steps" in err and str(cfg) in err
    assert not (tmp_path / "out").exists()


def test_labels_that_are_all_blank_is_a_clear_error(tmp_path) -> None:
    names = _images(tmp_path / "imgs", 2)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"filename": names, "label": ["", "  "]}).to_csv(labels, index=False)
    with pytest.raises(InputError) as err:
        ingest_images(str(tmp_path / "imgs"), str(labels), RunStore(str(tmp_path / "out")), DataConfig(resolution=16))
    assert str(labels) in str(err.value) and "column 'label'" in str(err.value) and "empty label" in str(err.value)


@pytest.mark.slow
def test_a_collection_of_one_usable_image_is_a_clear_error(prefect_harness, tmp_path, capsys) -> None:
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(images / "only.png")
    (images / "broken.png").write_bytes(b"not an image")
    code = main(["run", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--set", "runtime.progress=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "only 1 usable image(s)" in err and "manifest.parquet" in err
