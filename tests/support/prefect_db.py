"""A Prefect database already migrated to the installed Prefect's schema, for the servers the tests start.

A Prefect server on a new SQLite database first runs every migration of its schema: 12-20 s of CPU on
2 busy cores, for the session harness of each xdist worker and for each server a test starts on a fresh
`PREFECT_HOME`. The first harness up publishes a copy of its database (`VACUUM INTO`: a consistent copy
of a live database); servers started later begin from a copy and find nothing to migrate. Servers
started before that one is published migrate their own database, as Prefect does on a first start."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path


class MigratedDatabase:
    """The published database at `path` (shared by the processes that are given the same path)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def copy_to(self, target: Path) -> bool:
        """Copy the published database to `target` (the database file of a server not started yet);
        False (nothing copied) while none is published."""
        if not self.path.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, target)
        return True

    def publish(self, url: str) -> None:
        """Publish the database of a started server (`sqlite+aiosqlite:///PATH`, migrated by it), once."""
        prefix = "sqlite+aiosqlite:///"
        if self.path.exists() or not url.startswith(prefix):
            return
        source = Path(url.removeprefix(prefix))
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        with closing(sqlite3.connect(source)) as db:
            db.execute("VACUUM INTO ?", (str(part),))
        os.replace(part, self.path)
