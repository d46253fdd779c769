"""Test settings: an isolated Prefect home, generous server start-up time, no analytics.

The environment is set before anything imports Prefect. Flow tests share one
`prefect_test_harness` per session (starting it costs 10-15 s on a 2-core machine). Each xdist
worker process runs its own session: it imports this file, so it has its own PREFECT_HOME and harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="gcmine-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

# The files that take longest (minutes each on 2 busy cores), longest first. The suite runs on two
# xdist workers, a whole file at a time each, files in collection order (addopts in pyproject.toml):
# started first, these overlap each other and the many short files; one left to the end would run
# alone while the other worker idles. Each worker also holds one file queued behind the one it runs, so
# the files handed out last must all be short: test_finetune_data_parallel.py (45-90 s) had only ~20 s of
# files after it in collection order, enough to end the suite on one worker. Every other file keeps its
# place, after these.
# Measured 2026-11-30 (load 2-5): the first four 2-4 minutes each, the others 30-90 s.
LONGEST_FIRST = (
    "tests/flows/test_resume.py",
    "tests/test_types.py",  # mypy, cold cache
    # mostly waits on its server: overlaps the CPU-bound ones; queued behind test_resume, whose harness has
    # published the migrated Prefect database by the time its server starts
    "tests/flows/test_deploy_server.py",
    "tests/flows/test_pipeline.py",
    "tests/tasks/test_finetune_data_parallel.py",
    "tests/flows/test_extras.py",
    "tests/test_benchmark_scripts.py",
    "tests/flows/test_run_root_safety.py",
    "tests/gcmodels/diffusion/test_compile.py",
    "tests/bad_inputs/test_stalled_storage.py",
    "tests/gcmodels/diffusion/test_data_parallel.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The files of LONGEST_FIRST first (a stable sort: the same order in every worker, tests keep their
    order within a file); tests marked `gpu` need a CUDA device: skipped without one (`pytest -m gpu` on
    a GPU machine)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fresh_imports(tmp_path_factory, worker_id) -> dict:
    """What a fresh Python holds after importing the modules of the import-isolation tests
    (tests/support/fresh_imports.py): one subprocess for the whole session, its report shared by
    the xdist workers through their common temporary root."""
    from fresh_imports import shared_report

    return shared_report(None if worker_id == "master" else _session_root(tmp_path_factory, worker_id))


def _session_root(tmp_path_factory, worker_id):
    """The temporary folder of the whole test session: shared by the xdist workers, this process's own
    with -n 0."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory, worker_id):
    """The migrated Prefect database servers start from (tests/support/prefect_db.py)."""
    from prefect_db import MigratedDatabase

    return MigratedDatabase(_session_root(tmp_path_factory, worker_id) / "prefect-migrated.db")


@pytest.fixture(scope="session")
def prefect_harness(prefect_database):
    """Prefect's test harness (a server on a temporary database), its database a copy of the migrated
    one when one is published (then its server does not migrate), else published once it is up."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing import utilities
    from prefect.testing.utilities import prefect_test_harness

    def seeded_mkdtemp(*args, **kwargs) -> str:  # the harness's database is prefect-test.db in its mkdtemp()
        folder = tempfile.mkdtemp(*args, **kwargs)
        prefect_database.copy_to(Path(folder) / "prefect-test.db")
        return folder

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utilities, "mkdtemp", seeded_mkdtemp)
        with prefect_test_harness(server_startup_timeout=120):
            patch.undo()
            prefect_database.publish(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
            yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models, for which thread start-up costs more than it saves (and two test
    workers' threads would fight over 2 cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP vision model + image processor saved as a local transformers directory."""
    transformers = pytest.importorskip("transformers")
    import torch

    path = tmp_path_factory.mktemp("tiny-clip")
    config = transformers.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        projection_dim=8,
    )
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random Stable Diffusion v1.x directory (diffusers layout, own tokenizer files), latent
    factor 4: 16-pixel working images give 4 x 4 x 4 latents."""
    from sd_tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny random SDXL directory (text-time UNet, two CLIP text encoders and tokenizers)."""
    from sd_tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A tiny random SD3 directory (MMDiT, 16-channel VAE with shift, two CLIP + one T5 encoder)."""
    from sd_tiny import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "sd3", seed=0)


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory):
    """A tiny random DiT directory (10 classes + the null class, learned-variance output, 32 px samples)."""
    from sd_tiny import build_tiny_dit

    return build_tiny_dit(tmp_path_factory.mktemp("tiny-dit") / "dit", seed=0)
