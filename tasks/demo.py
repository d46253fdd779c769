"""The bundled demo datasets, written as a folder per label (plus ground truth where known)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gcmodels.data.images import encode_png, image_id
from gcmodels.data.synthetic import digits_dataset, motif_dataset
from gcmodels.mining.evaluation import DISTRACTOR_BOX

DEMOS = {
    "motifs": "4 labels x 100 photos (64x64) with a label-specific motif at a random place, plus a distractor "
    "shared by all labels; ground-truth boxes recorded",
    "digits": "scikit-learn's handwritten digits (10 labels x 50 images, 32x32)",
}


def write_demo(name: str, folder: str | Path) -> tuple[Path, Path | None]:
    """Write demo `name` under `folder`/images/<label>/*.png; return the images folder and the
    ground-truth table (image_id, label, filename, x0, y0, x1, y1 of the motif; dx0, dy0, dx1, dy1 of
    the distractor every label shares, where there is one), or None when there is none."""
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; choose one of {sorted(DEMOS)}")
    items = motif_dataset() if name == "motifs" else digits_dataset(n_per_label=50, size=32)
    root = Path(folder) / "images"
    rows = []
    counters: dict[str, int] = {}
    for item in items:
        n = counters[item.label] = counters.get(item.label, -1) + 1
        data = encode_png(item.image)
        path = root / item.label / f"{item.label}-{n:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        if item.box is not None:
            rows.append(
                {
                    "image_id": image_id(data),
                    "label": item.label,
                    "filename": path.relative_to(root).as_posix(),
                    "x0": item.box[0],
                    "y0": item.box[1],
                    "x1": item.box[2],
                    "y1": item.box[3],
                    **({} if item.distractor_box is None else dict(zip(DISTRACTOR_BOX, item.distractor_box))),
                }
            )
    if not rows:
        return root, None
    truth = Path(folder) / "ground_truth.csv"
    pd.DataFrame(rows).to_csv(truth, index=False)
    return root, truth
