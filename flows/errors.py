"""The errors gcmine explains in one line, and keeping their tracebacks out of the logs.

`gcmine` prints them as `gcmine: <message>` and exits 2 (bad input or settings) or 1 (a fault:
finished stages are kept, the same command resumes once the cause is fixed). In flow runs - the
CLI's and the deployments' - Prefect logs them as one line (its "Encountered exception" and
"Task run failed" records lose their traceback) and the run's state message is that line. Any
other exception keeps its traceback: that is a bug to report.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["OneLineErrors", "exit_code", "one_line_errors"]

# The loggers whose handlers see the records of flow and task runs (Prefect's console and API
# handlers) and of the CLI (the root logger's).
_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")


def exit_code(err: BaseException) -> int | None:
    """2 for bad input or settings, 1 for an explained fault, None for anything else (a bug)."""
    from gcmine.tasks.infra.errors import InputError, OutOfMemory, RunRootBusy, StorageAccessError, StorageError
    from gcmodels.config import ConfigError

    if isinstance(err, (InputError, ConfigError, StorageAccessError)):  # fix the input, a setting, the credentials
        return 2
    if isinstance(err, (StorageError, OutOfMemory, RunRootBusy)):
        return 1
    # these modules load the model stack: an error of theirs exists only once they were imported
    training, gpu = sys.modules.get("gcmodels.diffusion.training"), sys.modules.get("gcmine.tasks.infra.gpu")
    if training is not None and isinstance(err, training.TrainingDiverged):
        return 1
    if gpu is not None and isinstance(err, gpu.GPULimitMissing):
        return 1
    return None


class OneLineErrors(logging.Filter):
    """Drop the traceback of a log record whose exception is one gcmine explains (its message
    names the file, setting or variable to fix); every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is not None and exit_code(err) is not None:
            record.exc_info = None
            record.exc_text = None
        return True


def one_line_errors() -> None:
    """Install `OneLineErrors` on the handlers of the root, Prefect, flow-run and task-run loggers
    of this process (once each; call it after logging is configured)."""
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, OneLineErrors) for f in handler.filters):
                handler.addFilter(OneLineErrors())
