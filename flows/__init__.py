"""The gcmine flows: they only compose tasks (installed as ``gcmine.flows``).

- `pipeline`: `mine`, the whole DAG ingest -> embed -> cluster -> finetune -> score -> rank ->
  report, and `run_pipeline` (the task runner chosen from the settings);
- `production`: the flows behind deployments/prefect.yaml (`mine_configured`, `watch`);
- `evaluate`: `evaluate_run`, a finished run's maps against the user's boxes;
- `cli`: the `gcmine` command; `config`: settings from YAML and ``--set``; `doctor`, `serve`,
  `errors`, `steps` (the deployments' pull step).

Prefect deploys the flows from their files (``flows/production.py:mine_configured``), so the
folder names stay as they are in a checkout.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mine": "gcmine.flows.pipeline",
    "run_pipeline": "gcmine.flows.pipeline",
    "mine_configured": "gcmine.flows.production",
    "watch": "gcmine.flows.production",
    "evaluate_run": "gcmine.flows.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gcmine.flows' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
