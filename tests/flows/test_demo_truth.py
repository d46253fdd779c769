"""The motif demo's ground truth and the check `gcmine demo` prints at the end: the motif box, and
the box of the distractor every label shares (what the first elements should not be about)."""

from __future__ import annotations

import pandas as pd

from gcmine.flows.cli import _print_ground_truth
from gcmine.tasks.demo import write_demo
from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES
from gcmine.tasks.infra.storage import RunStore


def test_demo_truth_has_both_boxes_and_the_check_reports_them(tmp_path, capsys) -> None:
    images, truth_path = write_demo("motifs", tmp_path / "dataset")
    truth = pd.read_csv(truth_path)
    assert len(truth) == 400 and sorted(truth["label"].unique()) == ["circle", "cross", "square", "triangle"]
    assert (images / truth["filename"].iloc[0]).is_file()
    # the ring is drawn at least 2 px away from the motif: the boxes never overlap
    apart = (
        (truth["dx0"] >= truth["x1"] + 2)
        | (truth["x0"] >= truth["dx1"] + 2)
        | (truth["dy0"] >= truth["y1"] + 2)
        | (truth["y0"] >= truth["dy1"] + 2)
    )
    assert apart.all()
    # a run whose rank-0 patch is the motif box in 3 images of 4 (element 0) and the ring in the 4th
    # (element 1); the ring's element is flagged shared, so it is not one of the first elements
    rows = []
    for n, t in enumerate(truth.head(4).itertuples()):
        box = (t.dx0, t.dy0, t.dx1, t.dy1) if n == 3 else (t.x0, t.y0, t.x1, t.y1)
        rows.append({"image_id": t.image_id, "label": "a", "rank": 0, "element": int(n == 3), "typicality": 1.0})
        rows[-1].update(zip(("x0", "y0", "x1", "y1"), box))
    out = tmp_path / "run"
    store = RunStore(str(out))
    store.write_parquet(PATCHES, pd.DataFrame(rows))
    store.write_parquet(ELEMENTS, pd.DataFrame({"label": "a", "element": [0, 1], "shared": [False, True]}))
    _print_ground_truth(str(out), truth_path)
    err = capsys.readouterr().err
    assert "rank-0 patch contains the motif centre in 75.0% of 4 images" in err
    assert "the distractor every label shares: in 25.0% of the rank-0 patches and 25.0% of the patches" in err
    assert "0.0% of those of the first 4 not flagged shared" in err
    store.write_parquet(ELEMENTS, pd.DataFrame({"label": "a", "element": [0, 1], "shared": [False, False]}))
    _print_ground_truth(str(out), truth_path)
    assert "25.0% of those of the first 4 not flagged shared" in capsys.readouterr().err
