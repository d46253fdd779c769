"""The checks of `gcmine doctor`: what a production setup needs, each found ok or not with the fix.

Each check returns `Check`s (one line each when printed). Server checks take a synchronous
Prefect client; storage checks go through the run-root storage helpers with the configured
credentials, as a run would. Nothing here changes the server; the run-root check writes one small
probe object and removes it.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gcmine.tasks.infra.preflight import check_location
from gcmine.tasks.infra.storage import RunStore, is_local, open_fs, with_retries
from gcmodels.config import ConfigError, RuntimeConfig, Settings

__all__ = [
    "DEPLOYMENTS",
    "Check",
    "check_api",
    "check_deployments",
    "check_gpu_limit",
    "check_images",
    "check_model_base",
    "check_run_root",
    "check_work_pools",
    "gpu_configured",
]

Status = Literal["ok", "warn", "FAIL", "skip"]

# The deployments of deployments/prefect.yaml: "flow/deployment" -> does it run on a schedule?
DEPLOYMENTS = {"gcmine-production/production": True, "gcmine-production/reprocess": False, "gcmine-watch/watch": True}
LATE_AFTER = timedelta(minutes=5)  # a scheduled run this late means no worker takes it


@dataclass(frozen=True)
class Check:
    """One finding: `what` was checked, its `status`, the `detail`, and the `fix` when not ok."""

    what: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.what:<12} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix and self.status in ("FAIL", "warn") else text


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------- server
def check_api(api_url: str | None, client: Any) -> Check:
    """The Prefect API answers at PREFECT_API_URL."""
    if not api_url:
        return Check(
            "API",
            "FAIL",
            "PREFECT_API_URL is not set: deployments, workers and events need a Prefect server",
            "export PREFECT_API_URL=http://SERVER:4200/api (and PREFECT_API_AUTH_STRING if the server has one)",
        )
    failure = client.api_healthcheck()
    if failure is not None:
        return Check(
            "API",
            "FAIL",
            f"{api_url} does not answer ({_error(failure)})",
            "start the server (`prefect server start`) or correct PREFECT_API_URL / PREFECT_API_AUTH_STRING",
        )
    try:
        version = client.api_version()
    except Exception as err:
        if getattr(getattr(err, "response", None), "status_code", None) == 401:
            return Check(
                "API",
                "FAIL",
                f"{api_url} answers but refuses this client (401 Unauthorized)",
                "set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)",
            )
        return Check(
            "API",
            "FAIL",
            f"{api_url} answers its health check but not the API ({_error(err)})",
            "check PREFECT_API_URL",
        )
    return Check("API", "ok", f"{api_url} answers (API version {version})")


def check_deployments(client: Any, now: datetime | None = None) -> tuple[list[Check], dict[str, Any]]:
    """The three deployments exist and are not paused; the scheduled ones have an active schedule
    and upcoming runs (none means the server's scheduler creates no runs) and no run left late;
    the reprocess deployment has an enabled trigger. Also returns the deployments found."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    now = now or datetime.now(UTC)
    deploy = "prefect deploy --all --prefect-file deployments/prefect.yaml (from the checkout, GCMINE_* set)"
    checks: list[Check] = []
    found: dict[str, Any] = {}
    for name, scheduled in DEPLOYMENTS.items():
        try:
            dep = client.read_deployment_by_name(name)
        except ObjectNotFound:
            checks.append(Check("deployment", "FAIL", f"{name} is not deployed", deploy))
            continue
        found[name] = dep
        if dep.paused:
            checks.append(Check("deployment", "FAIL", f"{name} is paused", f"prefect deployment resume {name}"))
            continue
        if not scheduled:
            checks.append(_trigger_check(client, name, dep))
            continue
        active = [s for s in dep.schedules if s.active]
        if not active:
            checks.append(
                Check(
                    "schedule", "FAIL", f"{name} has no active schedule", f"activate it in the UI or redeploy: {deploy}"
                )
            )
            continue

        def scheduled_runs(deployment_id: Any = dep.id, **when: Any) -> list[Any]:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                    expected_start_time=FlowRunFilterExpectedStartTime(**when),
                ),
                limit=50,
            )

        upcoming = scheduled_runs(after_=now)
        late = scheduled_runs(before_=now - LATE_AFTER)
        if not upcoming:
            checks.append(
                Check(
                    "schedule",
                    "FAIL",
                    f"{name}: {len(active)} active schedule(s) but no upcoming run: the server's scheduler creates none",
                    "see the server's log for scheduler errors (SQLAlchemy 2.1 breaks Prefect 3.8.8's: pip install 'sqlalchemy<2.1' "
                    "and restart the server); a deployment made less than a minute ago may not have its runs yet",
                )
            )
        elif late:
            checks.append(
                Check(
                    "schedule",
                    "FAIL",
                    f"{name}: {len(late)} scheduled run(s) over {LATE_AFTER.seconds // 60} min late: no worker takes them",
                    f"start a worker of work pool {dep.work_pool_name} (see the worker check)",
                )
            )
        else:
            first = min(r.expected_start_time for r in upcoming)
            checks.append(
                Check("schedule", "ok", f"{name}: {len(upcoming)} upcoming run(s), next at {first:%Y-%m-%d %H:%M} UTC")
            )
    return checks, found


def _trigger_check(client: Any, name: str, dep: Any) -> Check:
    automations = client.read_resource_related_automations(f"prefect.deployment.{dep.id}")
    if not automations:
        return Check(
            "trigger",
            "FAIL",
            f"{name} has no trigger: dataset updates start nothing",
            "redeploy it from deployments/prefect.yaml",
        )
    off = [a.name for a in automations if not a.enabled]
    if len(off) == len(automations):
        return Check(
            "trigger",
            "FAIL",
            f"{name}: its automation {', '.join(off)} is disabled",
            "enable it on the UI's Automations page",
        )
    on = [a.name for a in automations if a.enabled]
    return Check("trigger", "ok", f"{name}: automation {', '.join(on)} enabled")


def check_work_pools(client: Any, pools: list[str]) -> list[Check]:
    """Each work pool the deployments use exists, is not paused, and has a live (ONLINE) worker."""
    from prefect.exceptions import ObjectNotFound

    checks = []
    for pool in pools:
        try:
            wp = client.read_work_pool(pool)
        except ObjectNotFound:
            checks.append(
                Check("work pool", "FAIL", f"{pool} does not exist", f"prefect work-pool create {pool} --type process")
            )
            continue
        if wp.is_paused:
            checks.append(Check("work pool", "FAIL", f"{pool} is paused", f"prefect work-pool resume {pool}"))
            continue
        workers = client.read_workers_for_work_pool(pool)
        online = [w for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
        start = f"from the checkout: GCMINE_REPO=$PWD prefect worker start --pool {pool}"
        if online:
            checks.append(
                Check("worker", "ok", f"{pool}: {len(online)} live worker(s) ({', '.join(w.name for w in online[:3])})")
            )
        elif workers:
            last = max((w.last_heartbeat_time for w in workers if w.last_heartbeat_time), default=None)
            when = f", last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC" if last else ""
            checks.append(Check("worker", "FAIL", f"{pool}: no live worker ({len(workers)} offline{when})", start))
        else:
            checks.append(Check("worker", "FAIL", f"{pool}: no worker has ever polled it", start))
    return checks


def gpu_configured(runtime: RuntimeConfig, cuda_available: Callable[[], bool]) -> bool:
    """Whether runs on this machine use a GPU: runtime.device cuda[:N], or auto with CUDA present."""
    device = runtime.device.strip().lower()
    return device.startswith("cuda") or (device == "auto" and cuda_available())


def check_gpu_limit(client: Any, runtime: RuntimeConfig, gpu: bool) -> Check:
    """Where a GPU is configured, the concurrency limit `runtime.gpu_limit` exists and is active."""
    from prefect.exceptions import ObjectNotFound

    if not gpu:
        return Check("GPU limit", "skip", f"no GPU configured here (runtime.device={runtime.device}, no CUDA device)")
    name = runtime.gpu_limit
    if name is None:
        return Check(
            "GPU limit",
            "warn",
            "runtime.gpu_limit is null: GPU stages of concurrent runs may share a card",
            "set runtime.gpu_limit (default 'gpu') and create it: prefect gcl create gpu --limit <GPUs>",
        )
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return Check(
            "GPU limit",
            "FAIL",
            f"concurrency limit {name!r} (runtime.gpu_limit) does not exist: GPU stages run unlimited",
            f"prefect gcl create {name} --limit <number of GPUs>",
        )
    if not limit.active:
        return Check("GPU limit", "FAIL", f"concurrency limit {name!r} is inactive", f"prefect gcl enable {name}")
    return Check("GPU limit", "ok", f"concurrency limit {name!r}: {limit.limit} slot(s)")


# ---------------------------------------------------------------------------------------- storage
_CREDENTIALS = "give this machine's (and the worker's) environment read access: AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or storage.* in the settings file"


def check_images(images: str | None, variable: str, settings: Settings) -> Check:
    """The images are set (not empty, not in the checkout), exist, hold at least one image file
    of data.extensions (or are a manifest file), and a file can be read with the configured credentials."""
    if images is None:
        return Check(
            "images", "skip", f"nothing to check: no production deployment and {variable} unset (or pass --images)"
        )
    try:
        check_location("images", images, variable)
    except ConfigError as err:
        return Check("images", "FAIL", str(err), f"set {variable} (or pass --images)")
    so = settings.storage.options()
    try:
        fs, path = open_fs(str(images), so)
        if not with_retries(fs, f"checking {images}", fs.exists, path):
            return Check(
                "images", "FAIL", f"{images} does not exist", f"check {variable} and this machine's view of it"
            )
        if with_retries(fs, f"checking {images}", fs.isdir, path):
            exts = tuple(e.lower() for e in settings.data.extensions)
            first = next(
                (
                    posixpath.join(root, f)
                    for root, _, files in fs.walk(path)
                    for f in sorted(files)
                    if f.lower().endswith(exts)
                ),
                None,
            )
            if first is None:
                return Check(
                    "images",
                    "FAIL",
                    f"{images} holds no image file ({', '.join(exts)})",
                    "check the folder, or data.extensions",
                )
        else:
            first = path
        with_retries(fs, f"reading {first}", fs.cat_file, first, start=0, end=64)
    except Exception as err:
        return Check("images", "FAIL", f"{images} cannot be read: {_error(err)}", _CREDENTIALS)
    shown = first if is_local(fs) else f"{fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]}://{first}"
    return Check("images", "ok", f"{images} readable (e.g. {shown})")


def check_run_root(out: str | None, variable: str, settings: Settings) -> Check:
    """The run root is set (not empty, not in the checkout) and a probe object can be written,
    read back and removed there with the configured credentials; an existing run's run.json reads."""
    if out is None:
        return Check(
            "run root", "skip", f"nothing to check: no production deployment and {variable} unset (or pass --out)"
        )
    try:
        check_location("out", out, variable)
    except ConfigError as err:
        return Check("run root", "FAIL", str(err), f"set {variable} (or pass --out)")
    probe = f".gcmine-doctor-{uuid.uuid4().hex[:12]}"
    try:
        store = RunStore(str(out), settings.storage.options())
        store.write_bytes(probe, b"gcmine doctor probe")
        if store.read_bytes(probe) != b"gcmine doctor probe":
            return Check("run root", "FAIL", f"{out}: a probe written there reads back different", "check the storage")
        with_retries(store.fs, f"removing {store.uri(probe)}", store.fs.rm, store.path(probe))
        mined = store.exists("run.json")
        if mined:
            store.read_json("run.json")
    except Exception as err:
        return Check(
            "run root",
            "FAIL",
            f"{out} is not writable: {_error(err)}",
            _CREDENTIALS.replace("read access", "write access"),
        )
    return Check("run root", "ok", f"{out} writable" + (" (holds a run)" if mined else " (no run yet)"))


def check_model_base(settings: Settings, check_base: Callable[[str, int], None]) -> Check:
    """model.base, when set, is a checkpoint gcmine can load (`check_base`: the layout and the
    feature block; one function, so the model-family check can replace it)."""
    base = settings.model.base
    if base is None:
        factor = settings.model.latent_factor
        what = (
            f"on the latents of an autoencoder learnt on the collection (model.latent_factor {factor})"
            if factor > 1
            else "on the working images' pixels"
        )
        return Check("model", "ok", f"model.base not set: a small UNet is trained from scratch {what}")
    try:
        check_base(base, settings.rank.feature_block)
    except ConfigError as err:
        return Check("model", "FAIL", str(err), "point model.base at a complete local diffusers directory")
    return Check("model", "ok", f"model.base {base} is a complete checkpoint")
