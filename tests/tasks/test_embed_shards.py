"""The embed stage per shard (`embed_shard` + `embeddings_table`, outside a flow via `.fn`) for
an encoder that needs no fit (a tiny random CLIP directory): same table as the single `embed`
task, under the same name; CLIP loaded once per process; fitted encoders refused per shard."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gcmine.tasks.embed import clip_encoder, embed, embed_shard, embeddings_table
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.ingest import ingest_images
from gcmodels.config import ConfigError, DataConfig, EmbedConfig


@pytest.fixture()
def ingested(tmp_path) -> tuple[dict, str]:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8), "RGB").save(images / f"im{i}.png")
    out = str(tmp_path / "run")
    summary = ingest_images(str(images), None, RunStore(out), DataConfig(resolution=16, shard_size=3), logger=None)
    return summary, out


def test_shards_gathered_equal_the_single_task(ingested, tiny_clip_dir):
    summary, out = ingested
    shards = summary["shards"]
    assert len(shards) == 3
    config = EmbedConfig(method="clip", clip_path=str(tiny_clip_dir), batch_size=2)
    single = embed.fn(out, [s["name"] for s in shards], summary["images_key"], config)
    parts = [embed_shard.fn(out, shard, config) for shard in shards]
    assert [p["images"] for p in parts] == [3, 3, 1] and parts[0]["encoder"] == single["encoder"]
    assert len({p["embeddings"] for p in parts}) == 3 and all(
        p["embeddings"].startswith("embeddings/part-") for p in parts
    )
    store = RunStore(out)
    expected = store.read_parquet(single["embeddings"])
    gathered = embeddings_table.fn(out, [p["embeddings"] for p in parts], summary["images_key"], config)
    assert (
        gathered["embeddings"] == single["embeddings"] and gathered["images"] == 7
    )  # the name the cluster stage reads
    got = store.read_parquet(gathered["embeddings"])
    assert list(got["image_id"]) == list(expected["image_id"])
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(expected["embedding"]), rtol=1e-5, atol=1e-6)
    assert clip_encoder(config) is clip_encoder(config)  # loaded once per process
    with pytest.raises(ValueError, match="embedded twice"):
        embeddings_table.fn(out, [parts[0]["embeddings"], parts[0]["embeddings"]], summary["images_key"], config)


def test_per_shard_refuses_fitted_encoders_and_a_missing_model(ingested):
    summary, out = ingested
    with pytest.raises(ConfigError, match=r"embed.method='pca' is fitted on the whole collection"):
        embed_shard.fn(out, summary["shards"][0], EmbedConfig())
    with pytest.raises(ConfigError, match="must run after finetune"):
        embed_shard.fn(out, summary["shards"][0], EmbedConfig(method="diffusion"))
