"""The evaluation flow behind `gcmine evaluate RUN --boxes BOXES`: a finished run's typicality
maps scored against the user's boxes (tasks/evaluate.py), with no model work, then the run's
report rendered again so that it shows the evaluation (tasks/report.py)."""

from __future__ import annotations

from prefect import flow

from gcmine.tasks.evaluate import check_evaluable, evaluate
from gcmine.tasks.infra.lease import run_lease
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.report import report_again
from gcmine.tasks.reporting.uiartifacts import publish_ui_artifacts, ui_summary

__all__ = ["evaluate_run"]


def _run_name() -> str:
    from prefect.runtime import flow_run

    out = str(flow_run.parameters.get("out", "")).rstrip("/").rsplit("/", 1)[-1] or "run"
    return f"evaluate-{out}"


@flow(name="gcmine-evaluate", flow_run_name=_run_name, log_prints=True)
def evaluate_run(out: str, boxes: str, storage_options: dict | None = None) -> dict:
    """Evaluate the maps of run root `out` against the boxes file `boxes`, and render its report
    again with the evaluation in it. The evaluation holds the run root's lease while it writes
    (a `gcmine run` started meanwhile waits for it, as for another run; one already writing, or
    a root left mid-update, is refused before the lease is taken; no in-progress marker: a failed
    evaluation leaves no run table half-written), then publishes the run's
    Prefect UI artifacts again on this flow run (the report link refreshed: a presigned S3 link
    expires)."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    check_evaluable(out, storage_options)
    with run_lease(
        RunStore(out, storage_options),
        flow_run_id=str(flow_run.id),
        mode="refuse",
        logger=get_run_logger(),
        marker=False,
    ):
        result = evaluate(out, boxes, storage_options)
        report = report_again(out, storage_options)
    publish_ui_artifacts(ui_summary(out, report["config"], storage_options), flow_run.root_flow_run_id or flow_run.id)
    return {**result, "report": report["report"]}
