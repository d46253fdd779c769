"""`gcmine serve RUN`: the report of a run root over http on 127.0.0.1, where the Prefect UI's
report link points (browsers do not follow file:// links from a web page).

Only the report is served, read from the run root (local or s3://) at each request, so a
rerun's report shows on reload: `/` redirects to `/<dataset>/`, which answers `report/index.html`
(self-contained: its images are embedded). Nothing else of the run root or of the machine is
reachable, and only from this machine (forward the port to look from another one).
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from gcmine.tasks.infra.artifacts import REPORT
from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.reporting.uiartifacts import served_path

__all__ = ["report_server"]

HOST = "127.0.0.1"


def report_server(run_root: str, port: int, storage_options: dict | None = None) -> ThreadingHTTPServer:
    """An http server on 127.0.0.1:`port` (0: any free port) answering the report of `run_root`
    (not started: call `serve_forever`). InputError if the run root has no report; OSError if
    the port is taken."""
    store = RunStore(run_root, storage_options)
    if not store.exists(REPORT):
        raise InputError(f"{store.uri(REPORT)} does not exist: run gcmine on {run_root} first (or check the path)")
    path = served_path(run_root)

    class Handler(BaseHTTPRequestHandler):
        server_version = "gcmine-serve"

        def do_GET(self) -> None:
            target = urlsplit(self.path).path
            if target == "/":
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", path)
                self.end_headers()
                return
            if target not in (path, path + "index.html"):
                self._text(
                    HTTPStatus.NOT_FOUND, f"gcmine serve shows the report of {run_root} at {path}, nothing else\n"
                )
                return
            try:
                body = store.read_bytes(REPORT)
            except Exception as err:
                self._text(HTTPStatus.BAD_GATEWAY, f"cannot read {store.uri(REPORT)}: {type(err).__name__}: {err}\n")
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _text(self, status: HTTPStatus, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            print(f"gcmine serve: {self.address_string()} {format % args}", file=sys.stderr)

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    return server
