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


def _multilabel_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import multilabel

    return multilabel


def test_multilabel_benchmark_scores_patches_as_computed_by_hand() -> None:
    """benchmarks/multilabel.py's patch measures on hand-made patches: rank-0 pointing (split by
    one- and two-motif images), the rank-0 patch on the OTHER motif or on the ring, top-element
    purity; a patch mined under a label the image does not show is an error."""
    import numpy as np
    import pandas as pd

    ml = _multilabel_module()
    motifs = pd.DataFrame(
        [
            ("a.png", "circle", 0, 0, 10, 10),
            ("a.png", "cross", 20, 20, 30, 30),
            ("b.png", "circle", 30, 0, 40, 10),
        ],
        columns=["filename", "label", "x0", "y0", "x1", "y1"],
    )
    images = pd.DataFrame(
        [("a.png", "circle|cross", "circle|cross", 40, 40, 50, 50), ("b.png", "circle", "circle", 0, 40, 10, 50)],
        columns=["filename", "motifs", "given", "dx0", "dy0", "dx1", "dy1"],
    )
    patches = pd.DataFrame(
        [
            ("a.png", "circle", 0, 0, 2, 2, 12, 12),  # on its own motif (centre 5, 5)
            ("a.png", "cross", 0, 0, 0, 0, 10, 10),  # on the other motif: circle's centre, not cross's (25, 25)
            ("a.png", "cross", 1, 0, 20, 20, 25, 25),  # cross's centre (25, 25) is on x1, y1: not contained
            ("b.png", "circle", 0, -1, 0, 40, 10, 50),  # on the ring
            ("b.png", "circle", 1, 0, 30, 0, 40, 10),  # own motif, top element
        ],
        columns=["filename", "label", "rank", "element", "x0", "y0", "x1", "y1"],
    )
    table = ml.score_patches(patches, motifs, images).set_index("label")
    expected = {
        #         pairs pointing single two  n  other ring  top_n purity top_other
        "circle": (2, 0.5, 0.0, 1.0, 1, 0.0, 0.5, 2, 1.0, 0.0),
        "cross": (1, 0.0, float("nan"), 0.0, 1, 1.0, 0.0, 2, 0.0, 0.5),
        "(all)": (3, 1 / 3, 0.0, 0.5, 2, 0.5, 1 / 3, 4, 0.5, 0.25),
    }
    columns = [
        "pairs",
        "pointing",
        "pointing_single",
        "pointing_two",
        "two",
        "on_other",
        "on_ring",
        "top_size",
        "top_purity",
        "top_on_other",
    ]
    assert list(table.index) == list(expected)
    for label, values in expected.items():
        got = table.loc[label, columns].to_numpy(dtype=float)
        np.testing.assert_allclose(got, values, err_msg=label, equal_nan=True)

    other = ml.other_motif_boxes(motifs, images)
    assert other.to_dict("records") == [
        {"filename": "a.png", "label": "circle", "x0": 20, "y0": 20, "x1": 30, "y1": 30},
        {"filename": "a.png", "label": "cross", "x0": 0, "y0": 0, "x1": 10, "y1": 10},
    ]
    wrong = pd.concat([patches, patches.iloc[[0]].assign(label="square")], ignore_index=True)
    with pytest.raises(ValueError, match="does not show"):
        ml.score_patches(wrong, motifs, images)


@pytest.mark.parametrize("per_pair", range(1, 6))
def test_multilabel_single_control_keeps_every_label_equally_often(per_pair: int) -> None:
    """--single: a two-motif image keeps one of its labels; over the 6 pairs of 4 labels, each
    label keeps as many images, to one, whatever the number of images per pair."""
    ml = _multilabel_module()
    import itertools
    from collections import Counter

    kept = Counter(
        ml._kept_label(pair, j, per_pair) for pair in itertools.combinations(ml.LABELS, 2) for j in range(per_pair)
    )
    assert set(kept) <= set(ml.LABELS) and sum(kept.values()) == 6 * per_pair
    assert max(kept.values()) - min(kept.get(label, 0) for label in ml.LABELS) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "multi"])
def test_multilabel_benchmark_runs(prefect_harness, tmp_path: Path, mode: str) -> None:
    """benchmarks/multilabel.py end to end on 10 images and a model trained 3 steps: the dataset
    files, the patch table (its rank-0 pointing recomputed here from patches.parquet and
    boxes.csv), both evaluations, and the run root left with the evaluation against the true
    boxes. `multi` needs multi-label images (data.label_separator); without them the script must
    stop before writing anything."""
    import pandas as pd
    from prefect.settings import PREFECT_API_URL
    from tiny import tiny_settings

    ml = _multilabel_module()
    out = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "multilabel.py"), "--per-label", "4", "--size", "32"]
    cmd += ["--out", str(out), *(["--single"] if mode == "single" else [])]
    for item in tiny_settings():
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    if mode == "multi" and not ml.multilabel_supported():
        assert done.returncode == 2 and "data.label_separator" in done.stderr and "--single" in done.stderr
        assert not out.exists()
        return
    assert done.returncode == 0, done.stderr[-3000:]

    data, run = out / "dataset", out / "run"
    labels = pd.read_csv(data / "labels.csv")
    boxes = pd.read_csv(data / "boxes.csv")
    assert len(labels) == 10 and len(list((data / "images").glob("*.png"))) == 10  # 6 pairs + 4 singles
    given = labels.assign(label=labels["label"].str.split("|")).explode("label")
    if mode == "single":
        assert not labels["label"].str.contains("|", regex=False).any()
        assert sorted(given["label"].value_counts().tolist()) == [2, 2, 3, 3]
    else:
        assert labels["label"].str.contains("|", regex=False).sum() == 6
        assert given["label"].value_counts().to_dict() == dict.fromkeys(ml.LABELS, 4)
    assert sorted(zip(boxes["filename"], boxes["label"])) == sorted(zip(given["filename"], given["label"]))

    lines = done.stdout.splitlines()
    start = lines.index("## mined patches") + 2
    rows = {line.split()[0]: line.split() for line in lines[start : start + 5]}
    assert list(rows) == [*sorted(ml.LABELS), "(all)"]
    manifest = pd.read_parquet(run / "manifest.parquet")
    patches = pd.read_parquet(run / "patches.parquet").merge(manifest[["image_id", "filename"]], on="image_id")
    r0 = patches[patches["rank"] == 0].merge(boxes, on=["filename", "label"], suffixes=("", "_m"))
    cx, cy = (r0["x0_m"] + r0["x1_m"]) / 2, (r0["y0_m"] + r0["y1_m"]) / 2
    r0["hit"] = (r0["x0"] <= cx) & (cx < r0["x1"]) & (r0["y0"] <= cy) & (cy < r0["y1"])
    assert len(r0) == len(boxes)  # a rank-0 patch for every labelled motif
    for label, group in r0.groupby("label"):
        assert int(rows[label][1]) == len(group) == (given["label"] == label).sum()
        assert float(rows[label][2]) == pytest.approx(group["hit"].mean(), abs=5e-4)

    head = "## typicality maps against each label's motif box"
    table = lines[next(i for i, line in enumerate(lines) if line.startswith(head)) + 2 :][:5]
    assert [line.split()[0] for line in table] == [*sorted(ml.LABELS), "(all)"]
    assert int(table[-1].split()[2]) == len(boxes)
    assert any(line.startswith("## the same maps against the OTHER motif's box") for line in lines)
    evaluation = pd.read_parquet(run / "evaluation.parquet")  # the last evaluation: the true boxes
    assert (evaluation["status"] == "ok").sum() == len(boxes)
    assert "RESULT: targets" in done.stdout


def test_parts_benchmark_classifies_elements_by_hand() -> None:
    """benchmarks/parts.py's measures on hand-made patches and elements: a patch's category (the
    smallest part whose centre it contains, else the ring, else the body, else background), an
    element is a part kind when over half its patches are on it, the pairs found, the thin part,
    rank-0 on an own-style part, and the ring counted as a first element."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import parts

    def thing(iid, label, kind, owner, box):
        return {
            "image_id": iid,
            "label": label,
            "kind": kind,
            "owner": owner,
            **dict(zip(("gx0", "gy0", "gx1", "gy1"), box)),
        }

    truth = pd.DataFrame(
        [
            thing("i1", "A", "lamp", "A", (10, 10, 20, 20)),
            thing("i1", "A", "pole", "", (40, 0, 44, 12)),
            thing("i1", "A", "ring", "", (70, 70, 80, 80)),
            thing("i1", "A", "body", "", (0, 0, 60, 60)),
            thing("i2", "A", "lamp", "", (10, 10, 20, 20)),
            thing("i2", "A", "pole", "A", (40, 0, 44, 12)),
            thing("i2", "A", "ring", "", (70, 70, 80, 80)),
            thing("i2", "A", "body", "", (0, 0, 60, 60)),
            thing("i3", "B", "lamp", "A", (10, 10, 20, 20)),  # crossed: A's style in B's image
            thing("i3", "B", "pole", "B", (40, 0, 44, 12)),
            thing("i3", "B", "ring", "", (70, 70, 80, 80)),
            thing("i3", "B", "body", "", (0, 0, 60, 60)),
        ]
    )
    rows = [
        # image, label, rank, element, box
        ("i1", "A", 0, 0, (8, 8, 22, 22)),  # lamp, own style
        ("i2", "A", 0, 1, (36, 0, 48, 12)),  # pole, own style
        ("i2", "A", 1, 0, (8, 8, 22, 22)),  # lamp, plain style
        ("i1", "A", 1, 1, (68, 68, 82, 82)),  # ring
        ("i1", "A", 2, 2, (25, 30, 35, 40)),  # body
        ("i3", "B", 0, 0, (66, 66, 84, 84)),  # ring
        ("i3", "B", 1, 0, (70, 70, 82, 82)),  # ring
        ("i3", "B", 2, 1, (30, 0, 50, 25)),  # pole, own style (B)
        ("i3", "B", 3, 2, (85, 0, 95, 10)),  # background
    ]
    patches = pd.DataFrame(
        [
            {"image_id": i, "label": lab, "rank": r, "element": e, **dict(zip(("x0", "y0", "x1", "y1"), b))}
            for i, lab, r, e, b in rows
        ]
    )
    cats = parts.classify_patches(patches, truth, ["lamp", "pole"])
    assert cats["category"].tolist() == ["lamp", "pole", "lamp", "ring", "body", "ring", "ring", "pole", "background"]
    assert cats["own"].tolist() == [True, True, False, False, False, False, False, True, False]

    elements = pd.DataFrame(
        {"label": ["A", "A", "A", "B", "B", "B"], "element": [0, 1, 2, 0, 1, 2], "rank": [0, 1, 2, 0, 1, 2]}
    )
    rep = parts.evaluate(patches, elements, truth, ["lamp", "pole"], first=2)
    a, b = rep["per_label"]["A"], rep["per_label"]["B"]
    assert a["owned"] == ["lamp", "pole"] and b["owned"] == ["pole"]
    # A's element 0: two lamp patches (one own style); element 1: pole and ring -> mixed (half is not over half)
    assert [f["kind"] for f in a["firsts"]] == ["lamp", "mixed"] and a["firsts"][0]["own_style"] == 0.5
    assert a["found"] == {"lamp": True, "pole": False}
    assert [f["kind"] for f in b["firsts"]] == ["ring", "pole"] and b["found"] == {"pole": True}
    assert a["pointing"] == 1.0 and b["pointing"] == 0.0  # i1 lamp own, i2 pole own; i3's rank 0 on the ring
    assert rep["pairs_found"] == 2 / 3 and rep["pairs"] == 3
    assert rep["ring_first"] == 1 and rep["ring_rank0"] == 1
    assert np.isclose(rep["pointing"], 2 / 3)


def test_latent_parts_benchmark_maps_latent_cells_back_to_pixels() -> None:
    """benchmarks/latent_parts.py (the product's autoencoder, tests/gcmodels/diffusion/test_autoencoder.py):
    a hot region of a 32 x 32 latent map becomes the rank-0 patch at its place in the 96 px image,
    and the box means read the map where the truth boxes are."""
    import pandas as pd
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import latent_parts

    maps = torch.zeros(2, 32, 32)
    maps[0, 10:16, 20:26] = 1.0  # a 6-cell patch (0.2 x 32) at x 20-26, y 10-16
    maps[1] = 0.5
    patches = latent_parts.patches_frame(maps, ["a", "b"], ["A", "B"], original=96, k=2)
    best = patches[(patches["image_id"] == "a") & (patches["rank"] == 0)].iloc[0]
    assert (best["x0"], best["y0"], best["x1"], best["y1"]) == (60, 30, 78, 48)
    assert best["typicality"] == pytest.approx(1.0)

    truth = pd.DataFrame(
        [
            {"image_id": "a", "label": "A", "kind": "lamp", "owner": "A", "gx0": 63, "gy0": 33, "gx1": 75, "gy1": 45},
            {"image_id": "b", "label": "B", "kind": "lamp", "owner": "", "gx0": 0, "gy0": 0, "gx1": 30, "gy1": 30},
            {"image_id": "a", "label": "A", "kind": "ring", "owner": "", "gx0": 0, "gy0": 60, "gx1": 20, "gy1": 80},
        ]
    )
    means = latent_parts.box_means(maps, truth, ["a", "b"], 96, ["lamp"])
    assert means["lamp"] == pytest.approx((1.0, 0.5))  # own style inside the hot region; plain on a flat map
    assert means["ring"][1] == pytest.approx(0.0)


def test_rerank_reads_only_the_last_candidates_of_each_shard(tmp_path: Path) -> None:
    """A run root re-ranked with other settings keeps its older candidate tables: the re-ranking
    benchmark reads per shard only the newest (counting both doubled every patch, RESULTS.md 12k)."""
    sys.path.insert(0, str(BENCHMARKS))
    from rerank_shared import current_candidates

    folder = tmp_path / "patch_candidates"
    folder.mkdir()
    for i, name in enumerate(["part-00000-aaaa", "part-00001-cccc", "part-00000-bbbb", "part-00001-dddd"]):
        path = folder / f"{name}.parquet"
        path.write_bytes(b"")
        os.utime(path, (1000 + i, 1000 + (i if name != "part-00001-dddd" else -5)))
    assert [p.name for p in current_candidates(str(tmp_path))] == ["part-00000-bbbb.parquet", "part-00001-cccc.parquet"]


def test_memory_scaling_elements_benchmark_runs(tmp_path: Path) -> None:
    """The elements stage's memory benchmark writes candidates as rank_shard does: it must keep
    pace with the candidate columns (it broke once when they grew draws and top_patch_se)."""
    res = subprocess.run(
        [sys.executable, str(BENCHMARKS / "memory_scaling.py"), "--elements", "--sizes", "30"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "30 images, elements (now)" in res.stdout and "30 images, elements (before)" in res.stdout
