"""The GPU benchmark of the Stable Diffusion path runs (tiny UNet, CPU, seconds): it must not rot
between the sessions that have a GPU. Speed is not tested here (benchmarks print numbers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sd_gpu_benchmark_runs_on_a_tiny_unet() -> None:
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "sd_gpu.py"), "--tiny", "--device", "cpu", "--resolution", "32",
        "--images", "4", "--draws", "2", "--batch", "8", "--train-steps", "1", "--warmup", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for heading in ("## fine-tuning", "## scoring", "## the reference approach", "GFLOP per input"):
        assert heading in out
    ref_row = [line for line in out.splitlines() if line.startswith("| 2 |")][-1].split("|")
    assert float(ref_row[5]) == 2 * 2 * 4 * 4 * 4 * 2  # N x 2 prompts x (4, 4, 4) latent x float16 bytes
