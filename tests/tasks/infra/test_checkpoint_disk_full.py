"""A full disk while a training checkpoint is written: the error names the checkpoint file (torch's
own error, "[enforce fail at inline_container.cc] ... file write failed", names none), the
previous checkpoint stays in place and no temporary file is left behind (issue 22)."""

from __future__ import annotations

import resource
import signal

import pytest
import torch

from gcmine.tasks.infra.checkpoints import CHECKPOINT, read_checkpoint, write_checkpoint
from gcmine.tasks.infra.errors import StorageError
from gcmine.tasks.infra.storage import RunStore


@pytest.fixture
def small_file_limit():
    """Files of this process may not grow beyond 64 KiB (as on a full disk: writes fail, EFBIG)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, old)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path, small_file_limit) -> None:
    store = RunStore(str(tmp_path / "run"))
    write_checkpoint(store, {"state": {"step": 1, "w": torch.zeros(4)}})
    big = {"state": {"step": 2, "w": torch.zeros(256 * 1024)}}  # 1 MiB of weights
    small_file_limit()
    try:
        with pytest.raises(StorageError) as err:
            write_checkpoint(store, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    msg = str(err.value)
    assert msg.startswith(
        f"writing the training checkpoint {store.uri(CHECKPOINT)} failed: the write failed, is the disk full?"
    )
    assert "run the same command again to resume" in msg and "\n" not in msg
    assert read_checkpoint(store)["state"]["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["finetune.pt"]
