"""Progress shown twice: a tqdm bar on the terminal and a Prefect progress artifact in the UI."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

_log = logging.getLogger("gcmine.progress")


def _in_a_run() -> bool:
    """Whether the caller runs inside a Prefect flow or task run (artifacts belong to one)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class StageProgress:
    """`update(done)` with the absolute count done; the Prefect artifact is refreshed at most
    every `every` seconds (and at the end), so the API is not flooded."""

    def __init__(self, total: int, desc: str, *, bar: bool, key: str, every: float = 2.0) -> None:
        self.total, self.desc, self.every = max(1, total), desc, every
        self.done = 0
        self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True) if bar else None
        self._last = 0.0
        self._artifact = None
        if not _in_a_run():  # a stage function called directly (tests, scripts): no run page to show it on
            return
        try:
            from prefect.artifacts import create_progress_artifact

            self._artifact = create_progress_artifact(progress=0.0, key=key, description=desc)
        except Exception as err:
            _log.debug("no progress artifact for %s: %s", desc, err)

    def update(self, done: int, **postfix: float) -> None:
        done = min(done, self.total)
        if self._bar is not None:
            self._bar.update(done - self.done)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.done = done
        now = time.monotonic()
        if self._artifact is not None and (now - self._last >= self.every or done >= self.total):
            self._last = now
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=100.0 * done / self.total)
            except Exception as err:
                _log.debug("progress artifact update failed: %s", err)

    def close(self) -> None:
        self.update(self.total if self.done else 0)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
