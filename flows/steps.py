"""The pull step of deployments/prefect.yaml: each flow run enters the gcmine checkout before its
flow is loaded. Prefect's own `set_working_directory` takes an empty directory (GCMINE_REPO unset
on the worker) as "stay here" and the run fails later on a file it cannot find; this one says
what to set. Imported by the flow-run process before anything else: keep it light."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enter_checkout"]

ENTRYPOINT = Path("flows") / "production.py"


def enter_checkout(directory: str | None) -> dict[str, str]:
    """Change into `directory`, the gcmine checkout holding the deployments' code (GCMINE_REPO in
    the worker's environment); `{"directory": <absolute path>}` for later steps. ValueError naming
    GCMINE_REPO when it is unset or names no checkout."""
    text = (directory or "").strip()
    if not text or "{{" in text:
        raise ValueError(
            "GCMINE_REPO is not set in the worker's environment: start the worker with GCMINE_REPO set to the "
            "gcmine checkout, e.g. from the checkout `GCMINE_REPO=$PWD prefect worker start --pool gcmine-process`"
        )
    path = Path(text).expanduser().resolve()
    if not (path / ENTRYPOINT).is_file():
        what = "does not exist" if not path.exists() else f"holds no {ENTRYPOINT}"
        raise ValueError(
            f"GCMINE_REPO={text} is not a gcmine checkout ({path} {what}): set GCMINE_REPO in the worker's "
            "environment to the checkout the deployments were made from and restart the worker"
        )
    os.chdir(path)
    return {"directory": str(path)}
