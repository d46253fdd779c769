"""The code's habits, checked in CI: `ruff format` leaves every file as it is, and `ruff check`
(the rule set of pyproject.toml) finds nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_code_is_formatted() -> None:
    proc = _ruff("format", "--check", "--diff", ".")
    assert proc.returncode == 0, "run `.venv/bin/ruff format .`\n" + proc.stdout[-3000:] + proc.stderr[-1000:]


def test_the_linter_finds_nothing() -> None:
    proc = _ruff("check", "--output-format", "concise", ".")
    assert proc.returncode == 0, "run `.venv/bin/ruff check --fix .`\n" + proc.stdout[-3000:] + proc.stderr[-1000:]
