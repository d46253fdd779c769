"""What a fresh Python loads when it imports gcmodels' modules, for the import-isolation tests
(gcmodels stays free of Prefect, umap loads only when asked for).

One subprocess imports the union of the modules those tests name (each separate subprocess cost 10-20 s
of torch/diffusers/sklearn imports on 2 busy cores) and reports every module it then holds. Importing
only adds modules, so a module absent after the union is absent after any part of it; for the failure
message, the probe names the module after whose import each watched package first appeared.
`shared_report` runs the probe once per test session: the xdist workers share its result through a
file under the session's temporary root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# every module an import-isolation test names, in the order imported
MODULES = (
    "gcmodels",
    "gcmodels.config",
    "gcmodels.diffusion",
    "gcmodels.mining.typicality",
    "gcmodels.mining.patches",
    "gcmodels.diffusion.training",
    "gcmodels.data.images",
    "gcmodels.mining.elements",
    "gcmodels.clustering.estimators",
    "gcmodels.embedding.pca",
    "gcmodels.data.synthetic",
    "gcmodels.mining.evaluation",
    "gcmodels.runtime",
    "gcmodels.embedding.autoencoders",
    "gcmodels.clustering.fitting",
    "gcmodels.clustering.collection",
    "gcmodels.clustering.dec",
    "gcmodels.embedding.encoders",
)
WATCHED = ("prefect", "umap")

_PROBE = f"""
import importlib, json, sys

def present(name):
    return any(m == name or m.startswith(name + ".") for m in sys.modules)

first = {{}}
def note(after):
    for name in {WATCHED!r}:
        if name not in first and present(name):
            first[name] = after

for module in {MODULES!r}:
    importlib.import_module(module)
    note(module)
from gcmodels.diffusion import families
found = sorted(families())  # imports every family module
note("gcmodels.diffusion.families()")
print(json.dumps({{"modules": sorted(sys.modules), "first_imported_by": first, "families": found}}))
"""


def probe() -> dict:
    """{"modules": every module the fresh Python holds, "first_imported_by": {watched package: the
    module whose import brought it in}, "families": the model families found (every family module
    imported)}."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the import probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def shared_report(folder: Path | None) -> dict:
    """`probe()`, run once for all processes that pass the same `folder` (None: not shared)."""
    if folder is None:
        return probe()
    from filelock import FileLock

    path = folder / "fresh-imports.json"
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            path.write_text(json.dumps(probe()))
        return json.loads(path.read_text())


def loaded(report: dict, package: str) -> list[str]:
    """The modules of `package` the probe's Python held (empty: never imported)."""
    return [m for m in report["modules"] if m == package or m.startswith(package + ".")]
