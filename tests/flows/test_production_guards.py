"""A misconfigured production run fails before any work with one line naming what to set; errors
gcmine explains are one line in the run's log and state message (no traceback); a worker without
GCMINE_REPO says so; `gcmine watch` and `gcmine run` on a missing dataset print one line."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from gcmine.flows.errors import OneLineErrors, exit_code
from gcmine.flows.steps import enter_checkout
from gcmine.tasks.infra.errors import InputError, StorageError
from gcmodels.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _logged(err: BaseException) -> str:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.addFilter(OneLineErrors())
    log = logging.getLogger(f"gcmine.test.{id(err)}")
    log.addHandler(handler)
    log.propagate = False
    try:
        raise err
    except BaseException:
        log.exception("Encountered exception during execution: %r", err)
    return sink.getvalue()


def test_explained_errors_lose_their_traceback_others_keep_it() -> None:
    assert exit_code(ConfigError("x")) == 2 and exit_code(InputError("x")) == 2
    assert exit_code(StorageError(5, "x")) == 1 and exit_code(ValueError("x")) is None
    one = _logged(ConfigError("config file nope.yaml does not exist"))
    assert one == "Encountered exception during execution: ConfigError('config file nope.yaml does not exist')\n"
    bug = _logged(KeyError("x"))
    assert "Traceback (most recent call last)" in bug


def test_worker_without_gcmine_repo_is_told_so(tmp_path, monkeypatch) -> None:
    for unset in ("", None, "  "):
        with pytest.raises(
            ValueError,
            match=r"GCMINE_REPO is not set in the worker's environment.*GCMINE_REPO=\$PWD prefect worker start",
        ):
            enter_checkout(unset)
    with pytest.raises(
        ValueError, match=rf"GCMINE_REPO={tmp_path} is not a gcmine checkout .*holds no flows/production.py"
    ):
        enter_checkout(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        enter_checkout(str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    assert enter_checkout(str(ROOT)) == {"directory": str(ROOT)} and Path.cwd() == ROOT


def test_the_refusal_goes_to_the_run_log(monkeypatch) -> None:
    """In a flow-run process the step's error is also an ERROR record of that flow run (sent to
    the API: the UI shows it; Prefect itself prints a failed step's error on the worker only)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b7762c7-ab5c-476c-af95-8119cba96577")
    monkeypatch.setattr(APILogWorker, "drain_all", lambda **kwargs: None)
    try:
        with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}), pytest.raises(ValueError):
            enter_checkout("")
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(handler)
    (record,) = records
    assert record.levelno == logging.ERROR and record.flow_run_id == "0b7762c7-ab5c-476c-af95-8119cba96577"
    assert record.getMessage().startswith("GCMINE_REPO is not set in the worker's environment")


def test_deployment_run_into_the_checkout_is_refused_before_any_work(tmp_path, monkeypatch) -> None:
    from gcmine.flows import production

    monkeypatch.setattr(production, "deployment", SimpleNamespace(id="d", name="production"))
    monkeypatch.chdir(ROOT)  # where a worker starts the run
    with pytest.raises(ConfigError, match=r"images='' names no location: GCMINE_IMAGES was probably unset"):
        production.mine_configured.fn(images="", out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"out='' names no location: GCMINE_OUT"):
        production.mine_configured.fn(images=str(tmp_path), out="")
    with pytest.raises(ConfigError, match=rf"images='\.venv' is {ROOT}/\.venv, inside the code checkout"):
        production.mine_configured.fn(images=".venv", out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"config='' names no settings file: GCMINE_CONFIG was probably unset"):
        production.mine_configured.fn(images=str(tmp_path), out=str(tmp_path / "out"), config="")
    with pytest.raises(ConfigError, match=r"uri='' names no location: GCMINE_IMAGES"):
        production.watch.fn(uri="", out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"out=.* inside the code checkout .*GCMINE_OUT"):
        production.watch.fn(uri=str(tmp_path), out=str(ROOT))
    assert not (tmp_path / "out").exists() and not list(ROOT.glob("manifest.parquet"))


def _run_logs(flow_run_ids: list) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        return [
            r.message for r in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))
        ]


def test_production_run_errors_are_one_line_in_log_and_state(prefect_harness, tmp_path) -> None:
    """An unset variable (refused before any work) and an error of the mining itself (an empty
    image folder, raised in the child flow's ingest task): each a one-line state message naming
    the fix, and no traceback in the logs of the run or of its child."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    from gcmine.flows.production import mine_configured

    refused = mine_configured(images="", out=str(tmp_path / "out"), return_state=True)
    assert refused.is_failed()
    assert refused.message.startswith(
        "Flow run encountered an exception: ConfigError: images='' names no location: GCMINE_IMAGES"
    )
    assert "\n" not in refused.message and not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    failed = mine_configured(images=str(tmp_path / "empty"), out=str(tmp_path / "out"), return_state=True)
    assert failed.is_failed() and "InputError: IMAGES" in failed.message and "holds no image files" in failed.message
    with get_client(sync_client=True) as client:
        child_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False))
        )
    children = [r.id for r in child_runs if r.parameters.get("images") == str(tmp_path / "empty")]
    assert len(children) == 1
    logs = _run_logs([refused.state_details.flow_run_id, failed.state_details.flow_run_id, *children])
    assert any("GCMINE_IMAGES was probably unset" in m for m in logs), logs
    assert any("holds no image files" in m for m in logs), logs
    assert not [m for m in logs if "Traceback" in m], logs


def test_cli_watch_on_a_missing_dataset_prints_one_line(prefect_harness, tmp_path, capsys) -> None:
    from gcmine.flows.cli import main

    assert main(["watch", str(tmp_path / "gone"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"gcmine: dataset {tmp_path}/gone does not exist"]
    assert not (tmp_path / "out").exists()


def test_cli_run_on_a_missing_folder_prints_one_line(tmp_path, capsys) -> None:
    from gcmine.flows.cli import main

    assert main(["run", str(tmp_path / "gone"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"gcmine: IMAGES {tmp_path}/gone does not exist"]
    (tmp_path / "imgs").mkdir()
    assert (
        main(["run", str(tmp_path / "imgs"), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "out")]) == 2
    )
    assert capsys.readouterr().err.strip().splitlines() == [f"gcmine: labels file {tmp_path}/l.csv does not exist"]
