"""Logging from tasks: Prefect's run logger inside a run, the standard logger outside one."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def stage_logger(name: str = "gcmine") -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
