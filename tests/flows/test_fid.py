"""`report.inception`: the samples compared with the real images on a local TorchScript
Inception-v3's pool features (the FID), and a bad network refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_settings
from tiny_inception import build_tiny_inception

from gcmine.flows.cli import main
from gcmine.tasks.infra.artifacts import SAMPLE_QUALITY, SAMPLES, SHARDS_META, read_images
from gcmine.tasks.infra.storage import RunStore
from gcmodels.data.synthetic import motif_dataset
from gcmodels.mining.frechet import FID_FEATURES, INCEPTION_DIM, frechet_distance_between, inception_features

pytestmark = pytest.mark.slow


def _images(root):
    images = root / "images"
    for i, item in enumerate(motif_dataset(n_per_label=4, size=24, labels=("circle", "cross"), seed=2)):
        (images / item.label).mkdir(parents=True, exist_ok=True)
        item.image.save(images / item.label / f"{i:02d}.png")
    return images


def test_the_fid_on_the_inception_features(prefect_harness, tmp_path) -> None:
    network_path = build_tiny_inception(tmp_path / "inception-2015-12-05.pt")
    out = tmp_path / "out"
    argv = ["run", str(_images(tmp_path)), "--out", str(out)]
    for item in tiny_settings("report.samples=3", "report.sample_steps=2", f"report.inception={network_path}"):
        argv += ["--set", item]
    assert main(argv) == 0
    store = RunStore(str(out))
    quality = store.read_parquet(SAMPLE_QUALITY).set_index("label")
    assert (quality["features"] == FID_FEATURES).all() and (quality["dim"] == INCEPTION_DIM).all()
    # the overall FID by hand: every sample against every trained image on the network's features
    import io

    from PIL import Image

    network = torch.jit.load(str(network_path))
    samples = store.read_parquet(SAMPLES)
    generated = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in samples["png"]])
    shards = [s["name"] for s in store.read_json(SHARDS_META)["shards"]]
    _, pixels = read_images(store, shards)
    expected = frechet_distance_between(inception_features(network, pixels), inception_features(network, generated))
    assert quality.loc["(all)", "frechet"] == pytest.approx(expected, rel=1e-6)
    section = (out / "report" / "index.html").read_text().split('<section id="samples">', 1)[1].split("</section>")[0]
    assert '<th class="n">FID</th>' in section and "not an FID" not in section


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "missing.pt", "is not a file"),
        (lambda d: (d / "x.pt").write_bytes(b"not torchscript") and d / "x.pt", "is not a usable TorchScript"),
        (lambda d: build_tiny_inception(d / "wrong.pt", features=10), "gave 10 features per image, not 2048"),
    ],
)
def test_a_bad_inception_network_exits_2_before_any_work(prefect_harness, tmp_path, capsys, make, words) -> None:
    out = tmp_path / "out"
    argv = ["run", str(_images(tmp_path)), "--out", str(out), "--set", f"report.inception={make(tmp_path)}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "report.inception" in err and words in err
    assert not out.exists() or not (out / "manifest.parquet").exists()
