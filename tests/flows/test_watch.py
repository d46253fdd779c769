"""The watch flow: one `gcmine.dataset.updated` event per change, none when nothing changed
(events captured at `emit_event`; the deployment test sends real ones to a real server)."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from gcmine.flows.production import watch
from gcmine.tasks.watch import DATASET_UPDATED, LISTING, diff_listings


@pytest.fixture
def emitted(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def fake_emit(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(id=uuid.uuid4())

    monkeypatch.setattr("gcmine.tasks.watch.emit_event", fake_emit)
    return calls


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)


def test_one_event_per_change_none_without_change(prefect_harness, tmp_path, emitted) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for i in range(3):
        _png(images / "a" / f"{i}.png", i)
    (images / "notes.txt").write_text("not an image: never counted")

    first = watch(uri=str(images), out=str(out))
    assert (first["added"], first["changed"], first["removed"], first["files"]) == (3, 0, 0, 3)
    assert len(emitted) == 1 and first["event"]
    event = emitted[0]
    assert event["event"] == DATASET_UPDATED
    assert event["resource"]["prefect.resource.id"] == f"gcmine.dataset.{images}"
    assert event["payload"] == {"uri": str(images), "out": str(out), "added": 3, "changed": 0, "removed": 0, "files": 3}

    again = watch(uri=str(images), out=str(out))
    assert (again["added"], again["changed"], again["removed"], again["event"]) == (0, 0, 0, None)
    assert len(emitted) == 1

    _png(images / "b" / "new.png", 200)  # added
    _png(images / "a" / "0.png", 99)  # same name, other bytes: changed
    (images / "a" / "2.png").unlink()  # removed
    third = watch(uri=str(images), out=str(out))
    assert len(emitted) == 2
    assert emitted[1]["payload"] == {
        "uri": str(images),
        "out": str(out),
        "added": 1,
        "changed": 1,
        "removed": 1,
        "files": 3,
    }
    assert third["examples"] == {"added": ["b/new.png"], "changed": ["a/0.png"], "removed": ["a/2.png"]}

    watch(uri=str(images), out=str(out))
    assert len(emitted) == 2


def test_first_watch_of_a_mined_root_compares_with_its_manifest(prefect_harness, tmp_path, emitted) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for i in range(3):
        _png(images / "a" / f"{i}.png", i)
    out.mkdir()
    # the last run saw 0.png, 1.png and a file since deleted; 2.png is new
    sources = [str(images / "a" / "0.png"), str(images / "a" / "1.png"), str(images / "a" / "gone.png")]
    pd.DataFrame({"source": sources, "image_id": ["x", "y", "z"]}).to_parquet(out / "manifest.parquet")
    result = watch(uri=str(images), out=str(out))
    assert (result["added"], result["changed"], result["removed"], result["against"]) == (1, 0, 1, "manifest")
    assert result["examples"]["added"] == ["a/2.png"] and result["examples"]["removed"] == ["a/gone.png"]
    assert len(emitted) == 1
    assert (out / LISTING).exists()


def test_a_change_whose_event_was_not_sent_stays_pending(prefect_harness, tmp_path, monkeypatch) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    _png(images / "0.png", 1)
    monkeypatch.setattr("gcmine.tasks.watch.emit_event", lambda **kwargs: None)  # no API to send it to
    assert watch(uri=str(images), out=str(out))["event"] is None
    assert not (out / LISTING).exists()
    assert watch(uri=str(images), out=str(out))["added"] == 1  # reported again


def test_missing_dataset_is_a_clear_error(prefect_harness, tmp_path) -> None:
    from gcmine.tasks.ingest import InputError

    with pytest.raises(InputError, match="does-not-exist does not exist"):
        watch(uri=str(tmp_path / "does-not-exist"), out=str(tmp_path / "out"))


def test_diff_listings_size_or_stamp() -> None:
    old = pd.DataFrame({"name": ["a", "b", "c"], "size": [1, 2, 3], "stamp": ["1", "2", "3"]})
    new = pd.DataFrame({"name": ["a", "b", "c", "d"], "size": [1, 5, 3, 4], "stamp": ["1", "2", "9", "4"]})
    assert diff_listings(old, new) == {"added": ["d"], "changed": ["b", "c"], "removed": []}
    assert diff_listings(None, new)["added"] == ["a", "b", "c", "d"]
