"""Listings of the watch: S3 stamps (moto's server on a free local port) and the CLI's refusal to
emit into no server."""

from __future__ import annotations

import socket

import pytest

from gcmine.tasks.watch import diff_listings, listing_table

KEY, SECRET = "AKIAGCMINEWATCH00001", "gcmine-watch-secret-7Hq2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    opts = {"endpoint_url": f"http://127.0.0.1:{port}"}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("watched")
    yield fs, opts
    server.stop()


def test_s3_listing_uses_etags(s3) -> None:
    fs, opts = s3
    fs.pipe("watched/ds/a/1.png", b"one")
    fs.pipe("watched/ds/b/2.jpg", b"two")
    fs.pipe("watched/ds/readme.txt", b"not an image")
    first = listing_table("s3://watched/ds", (".png", ".jpg"), opts)
    assert list(first["name"]) == ["a/1.png", "b/2.jpg"]
    assert list(first["size"]) == [3, 3] and first["stamp"].str.len().min() > 0

    fs.pipe("watched/ds/a/1.png", b"ONE")  # same size, other bytes: the ETag differs
    fs.pipe("watched/ds/c/3.png", b"three")
    fs.rm("watched/ds/b/2.jpg")
    second = listing_table("s3://watched/ds", (".png", ".jpg"), opts)
    assert diff_listings(first, second) == {"added": ["c/3.png"], "changed": ["a/1.png"], "removed": ["b/2.jpg"]}
    assert diff_listings(second, listing_table("s3://watched/ds", (".png", ".jpg"), opts)) == {
        "added": [],
        "changed": [],
        "removed": [],
    }


def test_cli_watch_needs_a_server(tmp_path, capsys) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gcmine.flows.cli import main

    (tmp_path / "images").mkdir()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["watch", str(tmp_path / "images"), "--out", str(tmp_path / "out")]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
