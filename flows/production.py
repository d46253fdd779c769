"""The flows behind the deployments of deployments/prefect.yaml.

- `mine_configured` (flow `gcmine-production`): the gcmine flow with its settings read from a
  YAML config file on the worker, for scheduled runs and for reprocessing triggered by a
  `gcmine.dataset.updated` event. Rerunning into the same run root is the incremental path:
  only new images are decoded and scored (see tasks/ingest.py and tasks/infra/caching.py).
- `watch` (flow `gcmine-watch`): compares a dataset location with its last listing and emits
  `gcmine.dataset.updated` (URI, run root, counts) when files were added, changed or removed.

Both refuse, before any work, run locations and a settings file that a deployment filled from
unset environment variables (tasks/infra/preflight.py). Errors gcmine explains fail the run with their
one line as the state message ("Flow run encountered an exception: ConfigError: ..."), logged
without a traceback (flows/errors.py).
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import deployment, flow_run

from gcmine.flows.config import load_settings
from gcmine.flows.errors import one_line_errors
from gcmine.tasks.infra.preflight import check_config_path, check_location
from gcmine.tasks.watch import announce, compare, save_listing

__all__ = ["mine_configured", "watch"]


def _dataset_name(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1] or "dataset"


def _refuse_unset(config: str | None, **locations: tuple[str, str]) -> None:
    """Before any work: refuse run locations (name=(value, the environment variable the
    deployment filled it from)) that are empty, '.', unfilled templates or - in a deployment run -
    inside the code checkout, and a settings file parameter that names no file (tasks/infra/preflight.py).
    Errors gcmine explains are logged in one line, without their traceback, from here on."""
    one_line_errors()
    deployed = deployment.id is not None
    for name, (value, variable) in locations.items():
        check_location(name, value, variable, deployment=deployed)
    check_config_path(config, "GCMINE_CONFIG")


def _production_run_name() -> str:
    return f"{deployment.name or 'production'}-{_dataset_name(flow_run.parameters.get('images', ''))}"


@flow(name="gcmine-production", flow_run_name=_production_run_name, log_prints=True)
def mine_configured(
    images: str,
    out: str,
    labels: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run the gcmine flow on `images` into `out` with the settings of YAML file `config` (a path
    on the worker, relative to its working directory) and `overrides` ("key=value", as `--set`).
    Into an existing run root this is the incremental path: only what changed is recomputed."""
    _refuse_unset(config, images=(images, "GCMINE_IMAGES"), out=(out, "GCMINE_OUT"))
    settings = load_settings(config, list(overrides or ()))
    # imported here: the model stack (torch, diffusers) takes seconds to import, which the watch
    # flow and `prefect deploy` (it imports this module) need not pay
    from gcmine.flows.pipeline import run_pipeline

    return run_pipeline(images, out, labels, settings)


def _watch_run_name() -> str:
    return f"watch-{_dataset_name(flow_run.parameters.get('uri', ''))}"


@flow(name="gcmine-watch", flow_run_name=_watch_run_name, log_prints=True)
def watch(uri: str, out: str, config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Compare dataset `uri` with its last listing (kept in run root `out`) and, if any image file
    was added, changed or removed, emit `gcmine.dataset.updated` with `uri`, `out` and the counts.
    `config`/`overrides` give the settings used here: `data.extensions` and `storage`."""
    _refuse_unset(config, uri=(uri, "GCMINE_IMAGES"), out=(out, "GCMINE_OUT"))
    settings = load_settings(config, list(overrides or ()))
    so = settings.storage.options()
    changes = compare(uri, out, settings.data.extensions, so)
    changed = bool(changes["added"] or changes["changed"] or changes["removed"])
    event_id = announce(uri, out, changes) if changed else None
    # A change whose event could not be sent stays pending: the next watch reports it again.
    if event_id is not None or not changed:
        save_listing(out, so)
    return {**changes, "event": event_id}
