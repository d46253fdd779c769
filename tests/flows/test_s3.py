"""The whole flow with images and run root on S3 (moto's server on 127.0.0.1, a free port)."""

from __future__ import annotations

import io
import socket
import tempfile

import pandas as pd
import pytest
from tiny import tiny_settings

from gcmine.flows.config import load_settings
from gcmine.flows.pipeline import run_pipeline
from gcmodels.data.synthetic import motif_dataset

pytestmark = pytest.mark.slow

KEY, SECRET = "AKIAGCMINETEST000001", "gcmine-test-secret-Zq8f3LxWv92N"
# the default model's kind (set: 16 px is under the 64 px where it is the default): the UNet on a collection
# autoencoder's latents (model/autoencoder/ goes to S3 with the rest)
TINY = tiny_settings("model.latent_factor=2", "train.autoencoder_steps=5")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    # credentials from the test; the endpoint comes from the settings object
    mp.setenv("AWS_ACCESS_KEY_ID", KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir("gcmine-data")
    for i, item in enumerate(motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=7)):
        buf = io.BytesIO()
        item.image.save(buf, format="PNG")
        fs.pipe(f"gcmine-data/images/{item.label}/{i:03d}.png", buf.getvalue())
    yield {"endpoint": endpoint, "fs": fs}
    mp.undo()
    server.stop()


def test_flow_on_s3(prefect_harness, s3, tmp_path, monkeypatch) -> None:
    scratch = tmp_path / "tmp"  # the system temp folder, private to this test
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    settings = load_settings(
        None, [*TINY, f"storage.endpoint_url={s3['endpoint']}", f"storage.key={KEY}", f"storage.secret={SECRET}"]
    )
    result = run_pipeline("s3://gcmine-data/images", "s3://gcmine-data/runs/r1", None, settings)
    fs = s3["fs"]
    opts = settings.storage.options()
    manifest = pd.read_parquet("s3://gcmine-data/runs/r1/manifest.parquet", storage_options=opts)
    assert (manifest["status"] == "ok").sum() == 8
    assert manifest["source"].str.startswith("s3://gcmine-data/images/").all()
    typ = pd.read_parquet("s3://gcmine-data/runs/r1/typicality.parquet", storage_options=opts)
    assert len(typ) == 8
    for name in ("patches", "elements", "clusters", "cluster_metrics", "embeddings", "training"):
        assert fs.exists(f"gcmine-data/runs/r1/{name}.parquet"), name
    assert fs.exists("gcmine-data/runs/r1/model/_COMPLETE.json")
    assert fs.exists("gcmine-data/runs/r1/model/unet/config.json")
    assert fs.exists("gcmine-data/runs/r1/model/autoencoder/model.safetensors")
    assert settings.model.latent_factor == 2 and settings.rank.feature_pool == "typical"
    maps = pd.read_parquet("s3://" + fs.glob("gcmine-data/runs/r1/maps/part-*.parquet")[0], storage_options=opts)
    assert (maps["height"] == 8).all() and (maps["width"] == 8).all()  # on the latent grid of 16 px images
    assert fs.exists("gcmine-data/runs/r1/report/index.html")
    assert result["report"].startswith("s3://gcmine-data/runs/r1/report/")

    # no secret in any object written
    for path in fs.find("gcmine-data/runs/r1"):
        data = fs.cat_file(path)
        assert SECRET.encode() not in data and KEY.encode() not in data, path

    # ... nor in what Prefect stored about the run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        params = str(client.read_flow_run(result["flow_run_id"]).parameters)
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[result["flow_run_id"]]))
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=flt) if a.key}
    assert SECRET not in params and KEY not in params
    assert not [k for k, a in artifacts.items() if SECRET in str(a.data)]

    # the UI's report link: a presigned http(s) link the browser follows, answered as an HTML page
    import re
    import urllib.request

    (link,) = re.findall(r"\]\((http[^)]+)\)", artifacts["gcmine-r1-report"].data)
    assert link.startswith(f"{s3['endpoint']}/gcmine-data/runs/r1/report/index.html?") and "Signature=" in link
    with urllib.request.urlopen(link, timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("text/html")
        assert answer.read() == fs.cat_file("gcmine-data/runs/r1/report/index.html")
    md = artifacts["gcmine-r1-summary"].data
    assert f"[Open the full report of r1]({link})" in md and "a presigned link, valid until" in md
    assert md.count("](data:image/") == 4  # the pictures of both labels' 2 elements, read from S3
    assert "presigned link" in artifacts["gcmine-r1-report"].description

    # `gcmine serve` answers the report of an S3 run root too (when the link has expired)
    from gcmine.flows.serve import report_server

    served = report_server("s3://gcmine-data/runs/r1", 0, opts)
    import threading

    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.server_port}/", timeout=30) as answer:
            assert answer.url.endswith("/r1/") and answer.read() == fs.cat_file("gcmine-data/runs/r1/report/index.html")
    finally:
        served.shutdown()
        served.server_close()

    # a rerun does no model work, results and cache both on S3
    again = run_pipeline("s3://gcmine-data/images", "s3://gcmine-data/runs/r1", None, settings)
    assert {"embed", "cluster", "finetune", "score[part-00000.parquet]", "rank[part-00001.parquet]"} <= set(
        again["reused"]
    )
    assert fs.find("gcmine-data/runs/r1/.cache")
    # nothing copied out of the run root is left behind (model downloads, checkpoints, staging)
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("gcmine-")]
    # the run released the root: no lease, no in-progress marker
    assert not fs.exists("gcmine-data/runs/r1/_lease.json") and not fs.exists("gcmine-data/runs/r1/_in_progress.json")
