"""Secrets are never echoed (validation errors, YAML errors, `gcmine config`); ingest opens
regular files only and refuses files over data.max_file_bytes before reading them; a backslash
is part of a file name; a device that is not there fails the run before any work (issue 22)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from gcmine.flows.cli import main
from gcmine.flows.config import describe_settings, load_settings
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images
from gcmodels.config import ConfigError, DataConfig

SECRET = "1234567890123"  # digits: YAML would read it as a number
WORDY = "s3cr3t-Zq8f3LxWv92N"


def _png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, 50)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ secrets
@pytest.mark.parametrize(
    "overrides",
    [
        [f"storage.secret={SECRET}", "storage.secret_key=x"],  # an unknown field next to the secret
        [f"storage.secretkey={WORDY}"],  # a misspelt secret: unknown setting, value masked
        [f"storage.secret={WORDY}", "storage.connect_timeout=-1"],
        [f"storage.secret.nested={WORDY}"],
        [f"storage={WORDY}"],
        [f"storage.key=[{WORDY}", "storage.region=[oops"],
        [f"storage.password=[{WORDY}"],  # not valid YAML, under storage
    ],
)
def test_no_error_echoes_a_secret(overrides, capsys) -> None:
    argv = ["config"]
    for o in overrides:
        argv += ["--set", o]
    code = main(argv)
    out, err = capsys.readouterr()
    assert SECRET not in out + err and WORDY not in out + err
    if code == 2:
        assert err.startswith("gcmine: ")


def test_a_secret_of_digits_is_kept_as_given_text() -> None:
    settings = load_settings(None, [f"storage.secret={SECRET}", "storage.key=0123"])
    assert settings.storage.secret.get_secret_value() == SECRET and settings.storage.key.get_secret_value() == "0123"


def test_a_config_file_with_a_bad_secret_line_is_not_echoed(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"storage:\n  secret: [{WORDY}\n  region: x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert WORDY not in str(err.value) and "not valid YAML" in str(err.value) and "line" in str(err.value)
    path.write_text(f"storage:\n  secret: {SECRET}\n  key: {{a: {WORDY}}}\n")  # a number; a mapping
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert SECRET not in str(err.value) and WORDY not in str(err.value) and "storage.secret" in str(err.value)


def test_gcmine_config_masks_the_secrets(capsys) -> None:
    assert main(["config", "--set", f"storage.secret={WORDY}", "--set", "storage.key=AKIAGCMINEKEY0001"]) == 0
    out = capsys.readouterr().out
    assert WORDY not in out and "AKIAGCMINEKEY0001" not in out
    assert "  secret: '**********'" in out and "  key: '**********'" in out
    assert "**********" not in describe_settings(load_settings())  # unset secrets print as null


# ------------------------------------------------------------------ special files
@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs" / "lab"
    root.mkdir(parents=True)
    for i in range(2):
        (root / f"ok{i}.png").write_bytes(_png(i))
    return tmp_path / "imgs"


def _reasons(summary_store: RunStore) -> dict[str, str]:
    manifest = summary_store.read_parquet("manifest.parquet")
    return dict(zip(manifest["filename"], manifest["reason"]))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_rejected_without_being_opened(folder, tmp_path) -> None:
    os.mkfifo(folder / "lab" / "pipe.png")  # opening it for reading would block forever
    store = RunStore(str(tmp_path / "out"))
    summary = ingest_images(str(folder), None, store, DataConfig(resolution=16))
    assert summary["ok"] == 2 and summary["rejected_by_reason"] == {"not a regular file": 1}
    assert _reasons(store)["pipe.png"] == "not a regular file: a FIFO (named pipe) (never opened)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_as_labels_file_is_an_input_error(folder, tmp_path) -> None:
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(InputError, match=r"labels file .*labels.csv is a FIFO \(named pipe\), not a CSV/Parquet file"):
        ingest_images(
            str(folder), str(tmp_path / "labels.csv"), RunStore(str(tmp_path / "out")), DataConfig(resolution=16)
        )


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_symlink_to_a_device_or_a_huge_file_is_rejected_before_reading(folder, tmp_path) -> None:
    os.symlink("/dev/zero", folder / "lab" / "zero.png")
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as fh:  # sparse: 3 GB that take no disk
        fh.truncate(3 * 2**30)
    os.symlink(huge, folder / "lab" / "huge.png")
    big = folder / "lab" / "big.png"
    big.write_bytes(_png(7, size=64))
    store = RunStore(str(tmp_path / "out"))
    limit = big.stat().st_size - 1
    summary = ingest_images(str(folder), None, store, DataConfig(resolution=16, max_file_bytes=limit))
    reasons = _reasons(store)
    assert reasons["zero.png"] == "not a regular file: a character device (never opened)"
    assert reasons["huge.png"].startswith("too large: 3,221,225,472 bytes, more than data.max_file_bytes")
    assert reasons["big.png"].startswith("too large:") and summary["ok"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="a backslash is a separator on Windows")
def test_a_backslash_is_part_of_a_file_name(tmp_path) -> None:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "a\\b.png").write_bytes(_png(1))  # one file at the top: unlabelled, named a\b.png
    (root / "cat" / "c\\d.png").write_bytes(_png(2))
    (root / "cat" / "e.png").write_bytes(_png(3))
    store = RunStore(str(tmp_path / "out"))
    ingest_images(str(root), None, store, DataConfig(resolution=16))
    manifest = store.read_parquet("manifest.parquet").set_index("filename")
    assert sorted(manifest.index) == ["a\\b.png", "c\\d.png", "e.png"]
    assert pd.isna(manifest.loc["a\\b.png", "label"]) and manifest.loc["c\\d.png", "label"] == "cat"
    assert (manifest["status"] == "ok").all()


# ------------------------------------------------------------------ device
def test_a_missing_device_fails_before_any_work(prefect_harness, folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert (
        main(
            ["run", str(folder), "--out", str(out), "--set", "runtime.device=cuda:7", "--set", "runtime.progress=false"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "gcmine: runtime.device is 'cuda:7'" in err
    assert not out.exists()  # nothing ingested, nothing written
