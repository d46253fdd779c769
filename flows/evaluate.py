"""The evaluation flow behind `gcmine evaluate RUN --boxes BOXES`: a finished run's typicality
maps scored against the user's boxes (tasks/evaluate.py), with no model work, then the run's
report rendered again so that it shows the evaluation (tasks/report.py)."""

from __future__ import annotations

from prefect import flow

from gcmine.tasks.evaluate import evaluate
from gcmine.tasks.report import report_again

__all__ = ["evaluate_run"]


def _run_name() -> str:
    from prefect.runtime import flow_run

    out = str(flow_run.parameters.get("out", "")).rstrip("/").rsplit("/", 1)[-1] or "run"
    return f"evaluate-{out}"


@flow(name="gcmine-evaluate", flow_run_name=_run_name, log_prints=True)
def evaluate_run(out: str, boxes: str, storage_options: dict | None = None) -> dict:
    """Evaluate the maps of run root `out` against the boxes file `boxes`, and render its report
    again with the evaluation in it."""
    result = evaluate(out, boxes, storage_options)
    return {**result, "report": report_again(out, storage_options)["report"]}
