"""The layer contract of `.importlinter`, checked with import-linter on the source (every import,
lazy ones included): flows -> tasks -> gcmodels, and no Prefect in gcmodels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run(
        [exe, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )


def test_the_layer_contract_holds() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_a_broken_layer_is_reported(tmp_path) -> None:
    """The check can fail: a copy of the packages where gcmodels imports Prefect and tasks imports flows."""
    for name, target in (("gcmodels", "gcmodels"), ("tasks", "gcmine/tasks"), ("flows", "gcmine/flows")):
        shutil.copytree(REPO / name, tmp_path / target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    (tmp_path / "gcmodels" / "bad.py").write_text("from prefect import flow\n")
    (tmp_path / "gcmine" / "tasks" / "bad.py").write_text("def f():\n    import gcmine.flows.cli\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "0 kept, 2 broken" in proc.stdout, proc.stdout[-3000:]
    assert "gcmodels.bad -> prefect" in proc.stdout and "gcmine.tasks.bad -> gcmine.flows.cli" in proc.stdout
