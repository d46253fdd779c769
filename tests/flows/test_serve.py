"""`gcmine serve RUN`: the report over http on 127.0.0.1 at the path the UI's link names, nothing else."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest

from gcmine.flows.cli import main
from gcmine.flows.serve import report_server
from gcmine.tasks.infra.errors import InputError


def _get(url: str) -> tuple[int, str, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.url, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, url, err.headers["Content-Type"], err.read().decode()


def test_serves_the_report_and_nothing_else(tmp_path) -> None:
    (tmp_path / "cars" / "report").mkdir(parents=True)
    (tmp_path / "cars" / "report" / "index.html").write_text("<h1>gcmine report</h1>")
    (tmp_path / "cars" / "manifest.parquet").write_bytes(b"private")
    server = report_server(str(tmp_path / "cars"), 0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, url, kind, body = _get(base + "/")
        assert (status, url, kind, body) == (200, base + "/cars/", "text/html; charset=utf-8", "<h1>gcmine report</h1>")
        assert _get(base + "/cars/index.html")[0] == 200
        (tmp_path / "cars" / "report" / "index.html").write_text("<h1>rerun</h1>")  # read at each request
        assert _get(base + "/cars/#label-0-a")[3] == "<h1>rerun</h1>"
        for path in (
            "/cars/manifest.parquet",
            "/manifest.parquet",
            "/cars/../manifest.parquet",
            "/etc/passwd",
            "/other/",
        ):
            status, _, _, body = _get(base + path)
            assert status == 404 and "shows the report of" in body and "private" not in body, path
    finally:
        server.shutdown()
        server.server_close()


def test_no_report_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InputError, match=r"report/index.html does not exist: run gcmine on .* first"):
        report_server(str(tmp_path), 0)


def test_cli_serve_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"gcmine: file://{tmp_path}/none/report/index.html does not exist: run gcmine on {tmp_path}/none first (or check the path)"
    ]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gcmine: cannot listen on 127.0.0.1:{port}") and "--port" in err[0]
