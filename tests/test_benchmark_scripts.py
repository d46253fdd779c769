"""The GPU benchmark of the Stable Diffusion path runs (tiny UNet, CPU, seconds): it must not rot
between the sessions that have a GPU. Speed is not tested here (benchmarks print numbers).

The four scripts that import torch and diffusers run as `python SCRIPT ARGS` would, one after another in
one interpreter (tests/support/scripts.py): their imports are paid once, not four times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import run_scripts

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The runs of the tiny-config benchmarks (name -> ScriptRun); `tmp`: their output folder."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    jobs = {
        "sd_gpu": (
            BENCHMARKS / "sd_gpu.py",
            "--tiny --device cpu --resolution 32 --images 4 --draws 2 --batch 8 --train-steps 1 --warmup 1".split(),
        ),
        "estimator_variance": (
            BENCHMARKS / "estimator_variance.py",
            ["--model-dir", str(tmp / "m")]
            + "--steps 2 --images 6 --draws 2 --repeats 1 --strata 4 --per-stratum 2 --resamples 3".split(),
        ),
        "families": (
            BENCHMARKS / "families.py",
            ["--tiny", "--time", "--time-only", "tiny DiT"] + "--score --draws 2 --images 2 --batch 8 --px 64".split(),
        ),
        "samples_frechet": (
            BENCHMARKS / "samples_frechet.py",
            "--steps 4 --checkpoints 0 4 --per-label 3 --sample-steps 2 --resolution 8 --channels 8 16".split()
            + ["--grid", str(tmp / "grid.png")],
        ),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    found = run_scripts(jobs, tmp / "results.json", cwd=ROOT, env=env, timeout=1500)
    return {**found, "tmp": tmp}


@pytest.mark.slow
def test_sd_gpu_benchmark_runs_on_a_tiny_unet(runs) -> None:
    done = runs["sd_gpu"]
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for heading in (
        "## fine-tuning",
        "| gcmine | fp32 |",
        "| diffusers' script | fp32 |",
        "## scoring",
        "## patch features",
        "## the reference approach",
        "GFLOP per input",
    ):
        assert heading in out
    ref_row = [line for line in out.splitlines() if line.startswith("| 2 |")][-1].split("|")
    assert float(ref_row[5]) == 2 * 2 * 4 * 4 * 4 * 2  # N x 2 prompts x (4, 4, 4) latent x float16 bytes


@pytest.mark.slow
def test_estimator_strata_study_runs_and_reports_every_stratum(runs) -> None:
    """The t-strata study of the estimator benchmark (RESULTS 3b/3c) on a model trained 2 steps."""
    done = runs["estimator_variance"]
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "4 strata of t in [0.1, 0.7] x 1000, 2 shared draws each" in out
    table = out.split("Spearman(stratum mean, ref)")[1].split("Neyman")[0].strip().splitlines()
    centres = [float(line.split()[0]) for line in table]
    assert len(centres) == 4 and centres == sorted(centres) and 100 <= centres[0] and centres[-1] < 700
    gain = float(out.split("Neyman allocation (same estimand) is worth ")[1].split()[0])
    assert gain >= 1.0  # mean(sigma^2) / mean(sigma)^2 can never be below 1
    names = {line[:18].strip() for line in out.splitlines() if line.startswith(("shared t<", "plain "))}
    assert names == {"shared t<0.70", "shared t<0.40", "plain"}  # 1 stratum below 0.25 is too few for N=2


def test_flop_count_includes_cpu_attention() -> None:
    """SDPA on a CPU runs a kernel torch's FLOP counter had no formula for (it counted 0):
    `count_flops` counts q k^T and scores v, 2 FLOPs per multiply-add, on the CPU and on meta tensors."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sd_gpu import count_flops

    b, h, s, d = 2, 4, 64, 16
    q = torch.randn(b, h, s, d)
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, q, q)
    assert plain.get_total_flops() == 0  # the defect: attention was not counted on a CPU
    expected = 2 * (2 * b * h * s * s * d)  # two batched matmuls
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == expected
    meta = torch.empty(b, h, s, d, device="meta")
    assert count_flops(lambda: F.scaled_dot_product_attention(meta, meta, meta)) == expected


@pytest.mark.slow
def test_families_benchmark_runs_on_tiny_configs(runs) -> None:
    """benchmarks/families.py (params, GFLOP at 256/512/1024 with attention, a timed forward in a
    fresh process, scoring) on tiny configs of each kind of denoiser: it must not rot."""
    done = runs["families"]
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| tiny")}
    assert (
        len([line for line in done.stdout.splitlines() if line.startswith("| tiny")]) == 3 + 1 + 3
    )  # meta, timed, scored
    dit = next(line for line in done.stdout.splitlines() if line.startswith("| tiny DiT")).split("|")
    assert dit[5].strip() == "n/a" and "@64)" in dit[7]  # a DiT only at its sample size
    assert "failed" not in done.stdout and "skipped" not in done.stdout and rows


@pytest.mark.slow
def test_samples_frechet_benchmark_runs(runs) -> None:
    """The samples / Frechet distance benchmark (RESULTS 13) on a model trained 4 steps: a row per
    checkpoint, the real-digits floor, and the grid of the last samples."""
    grid = runs["tmp"] / "grid.png"
    done = runs["samples_frechet"]
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the distance did not fall (4 steps prove nothing)
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[1].strip() for r in rows[1:]] == ["0", "4", "real digits (3 per digit, the floor)"]
    assert all(float(r[3]) >= 0 for r in rows[1:])
    from PIL import Image

    assert Image.open(grid).size == (3 * 8 * 4, 10 * 8 * 4)


def test_shape_buckets_benchmark_counts_fewer_shapes_with_larger_buckets() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "shape_buckets.py"), "--images", "500", "--resolution", "512"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 512 |")]
    assert len(rows) == 6  # two collections x multiples 8, 32, 64
    for first in (0, 3):
        shapes = [int(r[3]) for r in rows[first : first + 3]]
        score_fill = [float(r[6]) for r in rows[first : first + 3]]
        assert shapes[0] > shapes[1] > shapes[2] and score_fill[0] < score_fill[2] <= 1.0
