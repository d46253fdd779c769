"""The checks of `gcmine doctor`, each on a healthy and on a broken case (a fake Prefect client for
the server checks; tests/flows/test_deploy_server.py runs the command on a real server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from prefect.exceptions import ObjectNotFound

from gcmine.flows.doctor import model_loadable
from gcmine.tasks.infra.doctor import (
    check_api,
    check_deployments,
    check_gpu_limit,
    check_images,
    check_model_base,
    check_run_root,
    check_work_pools,
    gpu_configured,
)
from gcmodels.config import RuntimeConfig, Settings

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _missing(*args, **kwargs):
    raise ObjectNotFound(http_exc=Exception("404"))


class FakeClient:
    """What the checks read of a Prefect server: deployments, scheduled runs, automations, pools,
    workers, concurrency limits."""

    def __init__(self) -> None:
        schedule = [SimpleNamespace(active=True)]
        self.deployments = {
            name: SimpleNamespace(
                id=uuid4(),
                paused=False,
                schedules=[] if name.endswith("reprocess") else schedule,
                work_pool_name="gcmine-process",
                parameters={},
            )
            for name in ("gcmine-production/production", "gcmine-production/reprocess", "gcmine-watch/watch")
        }
        self.upcoming = [SimpleNamespace(expected_start_time=NOW + timedelta(hours=1))]
        self.late: list = []
        self.automations = [SimpleNamespace(name="gcmine-reprocess-on-dataset-updated", enabled=True)]
        self.pool = SimpleNamespace(is_paused=False)
        self.workers = [SimpleNamespace(name="w1", status="ONLINE", last_heartbeat_time=NOW)]
        self.limits = {"gpu": SimpleNamespace(active=True, limit=2)}

    def api_healthcheck(self):
        return None

    def api_version(self):
        return "3.8.8"

    def read_deployment_by_name(self, name):
        return self.deployments[name] if name in self.deployments else _missing()

    def read_flow_runs(self, flow_run_filter, limit):
        return self.late if flow_run_filter.expected_start_time.before_ else self.upcoming

    def read_resource_related_automations(self, resource_id):
        return self.automations

    def read_work_pool(self, name):
        return self.pool if self.pool is not None else _missing()

    def read_workers_for_work_pool(self, name):
        return self.workers

    def read_global_concurrency_limit_by_name(self, name):
        return self.limits[name] if name in self.limits else _missing()


def _statuses(checks) -> list[str]:
    return [c.status for c in checks]


def test_api() -> None:
    assert check_api("http://h:4200/api", FakeClient()).status == "ok"
    assert "PREFECT_API_URL is not set" in check_api(None, FakeClient()).detail
    down = SimpleNamespace(api_healthcheck=lambda: ConnectionError("refused"))
    check = check_api("http://h:4200/api", down)
    assert check.status == "FAIL" and "ConnectionError: refused" in check.detail and "prefect server start" in check.fix
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    def refused():
        request = httpx.Request("GET", "http://h:4200/api/admin/version")
        raise PrefectHTTPStatusError.from_httpx_error(
            httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))
        )

    locked = SimpleNamespace(api_healthcheck=lambda: None, api_version=refused)
    check = check_api("http://h:4200/api", locked)
    assert check.status == "FAIL" and "401 Unauthorized" in check.detail and "PREFECT_API_AUTH_STRING" in check.fix


def test_deployments_schedules_and_trigger() -> None:
    client = FakeClient()
    checks, found = check_deployments(client, NOW)
    assert _statuses(checks) == ["ok", "ok", "ok"] and len(found) == 3
    assert (
        "next at 2026-01-05 13:00 UTC" in checks[0].detail and "gcmine-reprocess-on-dataset-updated" in checks[1].detail
    )
    client.upcoming = []  # active schedule, no run: the scheduler is broken
    line = check_deployments(client, NOW)[0][0].line()
    assert line.startswith("FAIL  schedule") and "no upcoming run" in line and "sqlalchemy<2.1" in line
    client.upcoming, client.late = [SimpleNamespace(expected_start_time=NOW + timedelta(hours=1))], [object()]
    assert "late: no worker takes them" in check_deployments(client, NOW)[0][0].detail
    client.late = []
    client.automations[0].enabled = False
    assert "disabled" in check_deployments(client, NOW)[0][1].detail
    client.deployments["gcmine-watch/watch"].schedules = [SimpleNamespace(active=False)]
    client.deployments["gcmine-production/production"].paused = True
    del client.deployments["gcmine-production/reprocess"]
    checks = check_deployments(client, NOW)[0]
    assert [c.detail for c in checks] == [
        "gcmine-production/production is paused",
        "gcmine-production/reprocess is not deployed",
        "gcmine-watch/watch has no active schedule",
    ]
    assert "prefect deploy --all" in checks[1].fix


def test_work_pool_and_live_worker() -> None:
    client = FakeClient()
    assert (
        check_work_pools(client, ["gcmine-process"])[0].line()
        == "ok    worker       gcmine-process: 1 live worker(s) (w1)"
    )
    client.workers = [SimpleNamespace(name="w1", status="OFFLINE", last_heartbeat_time=NOW)]
    (check,) = check_work_pools(client, ["gcmine-process"])
    assert (
        check.status == "FAIL" and "no live worker (1 offline, last heartbeat 2026-01-05 12:00:00 UTC)" in check.detail
    )
    assert check.fix == "from the checkout: GCMINE_REPO=$PWD prefect worker start --pool gcmine-process"
    client.workers = []
    assert "no worker has ever polled it" in check_work_pools(client, ["gcmine-process"])[0].detail
    client.pool = None
    assert check_work_pools(client, ["gcmine-gpu"])[0].fix == "prefect work-pool create gcmine-gpu --type process"


def test_gpu_limit_where_a_gpu_is_configured() -> None:
    client = FakeClient()
    assert gpu_configured(RuntimeConfig(device="cuda:1"), lambda: False)
    assert gpu_configured(RuntimeConfig(device="auto"), lambda: True) and not gpu_configured(
        RuntimeConfig(device="auto"), lambda: False
    )
    assert check_gpu_limit(client, RuntimeConfig(device="cpu"), False).status == "skip"
    assert check_gpu_limit(client, RuntimeConfig(device="cuda"), True).detail == "concurrency limit 'gpu': 2 slot(s)"
    missing = check_gpu_limit(client, RuntimeConfig(device="cuda", gpu_limit="gpus-a100"), True)
    assert missing.status == "FAIL" and missing.fix == "prefect gcl create gpus-a100 --limit <number of GPUs>"
    assert check_gpu_limit(client, RuntimeConfig(device="cuda", gpu_limit=None), True).status == "warn"


def _images(folder: Path) -> Path:
    (folder / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a" / "0.png")
    return folder


def test_images_readable(tmp_path, monkeypatch) -> None:
    settings = Settings()
    images = _images(tmp_path / "images")
    assert (
        check_images(str(images), "GCMINE_IMAGES", settings).line()
        == f"ok    images       {images} readable (e.g. {images}/a/0.png)"
    )
    assert "does not exist" in check_images(str(tmp_path / "nope"), "GCMINE_IMAGES", settings).detail
    (tmp_path / "empty").mkdir()
    assert "holds no image file" in check_images(str(tmp_path / "empty"), "GCMINE_IMAGES", settings).detail
    assert "inside the code checkout" in check_images(str(ROOT), "GCMINE_IMAGES", settings).detail
    unset = check_images("", "GCMINE_IMAGES", settings)
    assert unset.status == "FAIL" and "GCMINE_IMAGES was probably unset" in unset.detail

    def denied(self, path, start=None, end=None, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "cat_file", denied)  # (as root, file modes would not stop the read)
    check = check_images(str(images), "GCMINE_IMAGES", settings)
    assert check.status == "FAIL" and "cannot be read: PermissionError" in check.detail and "AWS_PROFILE" in check.fix


def test_run_root_writable(tmp_path, monkeypatch) -> None:
    settings = Settings()
    assert (
        check_run_root(str(tmp_path / "out"), "GCMINE_OUT", settings).detail
        == f"{tmp_path / 'out'} writable (no run yet)"
    )
    assert not list((tmp_path / "out").iterdir())  # the probe is removed
    (tmp_path / "out" / "run.json").write_text("{}")
    assert check_run_root(str(tmp_path / "out"), "GCMINE_OUT", settings).detail.endswith("(holds a run)")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr("gcmine.tasks.infra.storage.os.replace", read_only)
    check = check_run_root(str(tmp_path / "out"), "GCMINE_OUT", settings)
    assert check.status == "FAIL" and "is not writable: StorageError" in check.detail and "write access" in check.fix


def test_model_base(tiny_sd_dir, tmp_path) -> None:
    assert check_model_base(Settings(), model_loadable).status == "ok"
    # what is trained without model.base: the default latent model, or the UNet on pixels
    assert "latents of an autoencoder" in check_model_base(Settings(), model_loadable).detail
    pixels = Settings.from_dict({"model": {"latent_factor": 1}, "data": {"resolution": 32}})
    assert "pixels" in check_model_base(pixels, model_loadable).detail
    assert check_model_base(Settings.from_dict({"model": {"base": str(tiny_sd_dir)}}), model_loadable).status == "ok"
    broken = check_model_base(Settings.from_dict({"model": {"base": str(tmp_path)}}), model_loadable)
    assert broken.status == "FAIL" and "model_index.json" in broken.detail
    bad_block = check_model_base(
        Settings.from_dict({"model": {"base": str(tiny_sd_dir)}, "rank": {"feature_block": 9}}), model_loadable
    )
    assert bad_block.status == "FAIL" and "rank.feature_block (9)" in bad_block.detail
