"""The type check of CI: mypy on gcmodels/ with `[tool.mypy]` of pyproject.toml (`make lint` alone)
finds nothing. It runs as a test so that its ~2 minutes (cold cache, 2 cores) overlap the other
worker's tests instead of preceding the whole suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_finds_nothing() -> None:
    exe = shutil.which("mypy", path=str(Path(sys.executable).parent)) or "mypy"
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "run `make lint`\n" + proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.startswith("Success: no issues found"), proc.stdout[-2000:]
