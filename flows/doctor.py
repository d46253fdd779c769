"""`gcmine doctor`: check a production setup (README, "Production") and say what to fix.

Run it after deploying, on the machine and with the environment of the worker: the API answers;
the deployments exist, their schedules are active and have upcoming runs, the reprocess trigger
is enabled; each work pool has a live worker; where a GPU is configured its concurrency limit
exists; the settings file is valid and `model.base` loadable; the images are readable and the
run root writable with the configured credentials. Images, run root and settings file are the
production deployment's parameters unless given (then GCMINE_IMAGES, GCMINE_OUT, GCMINE_CONFIG);
relative paths are taken in GCMINE_REPO (where runs start), else here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gcmine.flows.config import load_settings
from gcmine.tasks.infra.doctor import (
    Check,
    check_api,
    check_deployments,
    check_gpu_limit,
    check_images,
    check_model_base,
    check_run_root,
    check_work_pools,
    gpu_configured,
)
from gcmine.tasks.infra.preflight import check_config_path
from gcmodels.config import ConfigError, Settings

__all__ = ["doctor", "model_loadable"]

PRODUCTION = "gcmine-production/production"
DEFAULT_POOL = "gcmine-process"


def model_loadable(base: str, feature_block: int) -> None:
    """ConfigError unless `base` is a checkpoint a run can load (the check a run makes first;
    the one place to swap in the model-family check)."""
    from gcmine.tasks.latents import check_base

    check_base(base, feature_block)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _in_checkout(value: str | None) -> str | None:
    """A relative local path as a run would see it: in GCMINE_REPO (its working directory)."""
    repo = os.environ.get("GCMINE_REPO")
    if not value or "://" in value or Path(value).is_absolute() or not repo or "{{" in value:
        return value
    return str(Path(repo) / value)


def doctor(
    images: str | None = None,
    out: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> list[Check]:
    """Every check, in the order a setup is built; each a `Check` (see tasks/infra/doctor.py)."""
    from prefect.settings import PREFECT_API_URL

    checks: list[Check] = []
    found: dict[str, Any] = {}
    api_url = PREFECT_API_URL.value()
    client_cm = None
    client = None
    if api_url:
        from prefect.client.orchestration import get_client

        client_cm = get_client(sync_client=True)
        client = client_cm.__enter__()
    try:
        api = check_api(api_url, client)
        checks.append(api)
        if api.status == "ok":
            try:
                found_checks, found = check_deployments(client)
                checks += found_checks
                pools = sorted({d.work_pool_name for d in found.values() if d.work_pool_name}) or [DEFAULT_POOL]
                checks += check_work_pools(client, pools)
            except Exception as err:
                checks.append(
                    Check(
                        "server",
                        "FAIL",
                        f"reading deployments and work pools failed: {type(err).__name__}: {err}",
                        "see the server's log",
                    )
                )

        # the values a scheduled run uses: given here, else the production deployment's, else the environment
        params = found[PRODUCTION].parameters if PRODUCTION in found else {}
        where = "the production deployment" if PRODUCTION in found else "the environment"

        def pick(given: str | None, param: str, variable: str) -> str | None:
            if given is not None:
                return given
            return params[param] if param in params else os.environ.get(variable)

        images = _in_checkout(pick(images, "images", "GCMINE_IMAGES"))
        out = _in_checkout(pick(out, "out", "GCMINE_OUT"))
        config = _in_checkout(pick(config, "config", "GCMINE_CONFIG"))
        settings: Settings | None = None
        try:
            check_config_path(config, "GCMINE_CONFIG")
            settings = load_settings(config, list(overrides or ()))
            what = f"settings file {config} valid" if config else "no settings file: the defaults"
            checks.append(Check("settings", "ok", f"{what} (images, run root and settings from {where} unless given)"))
        except ConfigError as err:
            checks.append(
                Check(
                    "settings",
                    "FAIL",
                    str(err),
                    "fix the settings file: `gcmine config --config FILE` shows its errors",
                )
            )
        if settings is None:
            checks.append(Check("model", "skip", "settings invalid"))
            checks.append(Check("images", "skip", "settings invalid (storage credentials unknown)"))
            checks.append(Check("run root", "skip", "settings invalid (storage credentials unknown)"))
            return checks
        if api.status == "ok":
            checks.append(check_gpu_limit(client, settings.runtime, gpu_configured(settings.runtime, _cuda_available)))
        checks.append(check_model_base(settings, model_loadable))
        checks.append(check_images(images, "GCMINE_IMAGES", settings))
        checks.append(check_run_root(out, "GCMINE_OUT", settings))
        return checks
    finally:
        if client_cm is not None:
            client_cm.__exit__(None, None, None)
