"""The public API of each package is re-exported from its `__init__` (issue 17's layout)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import gcmodels

SUBPACKAGES = ["diffusion", "mining", "clustering", "embedding", "data", "baselines"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_exports_what_its_all_names(name) -> None:
    package = importlib.import_module(f"gcmodels.{name}")
    assert package.__all__ == sorted(set(package.__all__), key=package.__all__.index)
    for export in package.__all__:
        assert getattr(package, export) is not None, export


def test_gcmodels_exports_every_subpackage_name_lazily() -> None:
    for name in SUBPACKAGES:
        for export in importlib.import_module(f"gcmodels.{name}").__all__:
            assert export in gcmodels.__all__, export
    assert gcmodels.TypicalityEstimator is importlib.import_module("gcmodels.mining.typicality").TypicalityEstimator
    assert gcmodels.Settings is importlib.import_module("gcmodels.config").Settings
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = gcmodels.nothing_here


def test_importing_gcmodels_alone_loads_nothing_heavy() -> None:
    code = "import sys, gcmodels; print(sorted(m for m in ('torch', 'diffusers', 'sklearn', 'prefect') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_flows_are_exported_from_gcmine_flows() -> None:
    import gcmine.flows
    from gcmine.flows.pipeline import mine

    assert gcmine.flows.mine is mine
    assert set(gcmine.flows.__all__) == {"evaluate_run", "mine", "mine_configured", "run_pipeline", "watch"}
    for name in gcmine.flows.__all__:
        assert callable(getattr(gcmine.flows, name))
