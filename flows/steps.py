"""The pull step of deployments/prefect.yaml: each flow run enters the gcmine checkout before its
flow is loaded. Prefect's own `set_working_directory` takes an empty directory (GCMINE_REPO unset
on the worker) as "stay here" and the run fails later on a file it cannot find; this one says
what to set. Imported by the flow-run process before anything else: keep it light."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["enter_checkout"]

ENTRYPOINT = Path("flows") / "production.py"


def _refuse(message: str) -> ValueError:
    """`message` as an ERROR line of the flow run's log in the UI (Prefect prints a failed step's
    error on the worker's terminal only; the run shows "Process exited with status code: 1"),
    and as the error to raise."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if run_id:
        try:
            from prefect.logging.handlers import APILogWorker

            logging.getLogger("prefect.flow_runs").error(message, extra={"flow_run_id": run_id})
            APILogWorker.drain_all(timeout=5)
        except Exception:
            pass
    return ValueError(message)


def enter_checkout(directory: str | None) -> dict[str, str]:
    """Change into `directory`, the gcmine checkout holding the deployments' code (GCMINE_REPO in
    the worker's environment); `{"directory": <absolute path>}` for later steps. ValueError naming
    GCMINE_REPO when it is unset or names no checkout."""
    text = (directory or "").strip()
    if not text or "{{" in text:
        raise _refuse(
            "GCMINE_REPO is not set in the worker's environment: start the worker with GCMINE_REPO set to the "
            "gcmine checkout, e.g. from the checkout `GCMINE_REPO=$PWD prefect worker start --pool gcmine-process`"
        )
    path = Path(text).expanduser().resolve()
    if not (path / ENTRYPOINT).is_file():
        what = "does not exist" if not path.exists() else f"holds no {ENTRYPOINT}"
        raise _refuse(
            f"GCMINE_REPO={text} is not a gcmine checkout ({path} {what}): set GCMINE_REPO in the worker's "
            "environment to the checkout the deployments were made from and restart the worker"
        )
    os.chdir(path)
    return {"directory": str(path)}
