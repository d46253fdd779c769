"""The code version that keys every cached stage result (tasks/infra/caching.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import gcmodels
from gcmine.tasks.infra.caching import code_fingerprint


def test_code_fingerprint_follows_the_source(tmp_path, monkeypatch) -> None:
    """The fingerprint hashes the packages' files wherever they are installed; an edit changes it."""
    copy = tmp_path / "gcmodels"
    shutil.copytree(Path(gcmodels.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gcmodels, "__file__", str(copy / "__init__.py"))
    same = code_fingerprint.__wrapped__()
    assert same == code_fingerprint()  # an identical copy: the same code version
    target = copy / "mining" / "typicality.py"
    target.write_text(target.read_text() + "\n# edited\n")
    assert code_fingerprint.__wrapped__() != same


def test_code_fingerprint_refuses_to_hash_nothing(tmp_path, monkeypatch) -> None:
    import gcmine.tasks

    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setattr(gcmodels, "__file__", str(empty / "__init__.py"))
    monkeypatch.setattr(gcmine.tasks, "__file__", str(empty / "__init__.py"))
    with pytest.raises(RuntimeError, match="no source files"):
        code_fingerprint.__wrapped__()
