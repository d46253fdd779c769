"""Test helpers for looking at the Prefect UI with a real browser: a `prefect server start` (UI
included) on the database of a test harness, and headless Chromium driven through the DevTools
protocol (websockets, a Prefect dependency). Everything started is stopped on exit."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Page", "chromium_page", "chromium_path", "free_port", "prefect_ui_server"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} not answering at {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def prefect_ui_server(database_url: str, home: Path, timeout: float = 240) -> Iterator[str]:
    """A Prefect server with its UI on a free port, serving `database_url` (the test harness's
    database, so the harness's runs are there); yields the UI's base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url,
        PREFECT_UI_API_URL=f"{base}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
    )
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"{base}/api/health", timeout, proc, "prefect server", log)
        yield base
    finally:
        _stop(proc)


class Page:
    """One browser tab, driven through the Chrome DevTools protocol."""

    def __init__(self, ws) -> None:
        self._ws, self._ids = ws, itertools.count(1)

    def call(self, method: str, **params):
        i = next(self._ids)
        self._ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def scroll_to_bottom(self) -> None:
        """Scroll the window and every scrolled element to its end (lists load what comes into view)."""
        self.js(
            "window.scrollTo(0, document.body.scrollHeight); document.querySelectorAll('*').forEach("
            "e => { if (e.scrollHeight > e.clientHeight + 50) e.scrollTop = e.scrollHeight; })"
        )

    def wait_text(self, *needles: str, timeout: float = 90, scroll: bool = False) -> str:
        """The page's visible text once it shows every needle (the app renders after its API calls);
        with `scroll`, scrolled to the end before each look."""
        end = time.monotonic() + timeout
        while True:
            if scroll:
                self.scroll_to_bottom()
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > end:
                missing = [n for n in needles if n not in text]
                raise AssertionError(f"page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def click_text(self, selector: str, label: str, timeout: float = 60) -> None:
        """Click the element matching `selector` whose text is `label`."""
        expr = f"[...document.querySelectorAll({json.dumps(selector)})].find(e => e.innerText.trim() === {json.dumps(label)})"
        end = time.monotonic() + timeout
        while not self.js(f"!!({expr})"):
            if time.monotonic() > end:
                raise AssertionError(f"no {selector} labelled {label!r}; page shows:\n{self.text()[:3000]}")
            time.sleep(0.5)
        self.js(f"({expr}).click()")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


@contextmanager
def chromium_page(binary: str, profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """Headless Chromium with one page open on about:blank."""
    from websockets.sync.client import connect

    port = free_port()
    log = profile.with_suffix(".log")
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/json/version", 60, proc, "chromium", log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield Page(ws)
    finally:
        _stop(proc)
