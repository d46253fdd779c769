"""rank: the feature forwards hold at most `rank.feature_batch` UNet inputs, give the same
candidates whatever the cap, and an out-of-memory error names the setting to lower."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gcmine.tasks.infra.errors import OutOfMemory
from gcmine.tasks.infra.storage import RunStore
from gcmodels.config import DataConfig, ModelConfig, RankConfig, RuntimeConfig, ScoreConfig, TrainConfig
from gcmodels.diffusion import PixelDiffusion

RUNTIME = RuntimeConfig(device="cpu", threads=1, progress=False)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """A tiny ingested, trained (2 steps) and scored run of 10 images in one shard, on the default
    model: the UNet on a collection autoencoder's latents (maps on the 8 x 8 latent grid)."""
    import prefect.artifacts

    from gcmine.tasks.finetune import finetune
    from gcmine.tasks.ingest import ingest
    from gcmine.tasks.score import score_shard

    work = tmp_path_factory.mktemp("rank-batch")
    rng = np.random.default_rng(0)
    for i in range(10):
        folder = work / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    out = str(work / "run")
    mp = pytest.MonkeyPatch()
    mp.setattr(
        prefect.artifacts, "create_progress_artifact", lambda **kw: (_ for _ in ()).throw(RuntimeError("no API"))
    )
    ingested = ingest.fn(str(work / "images"), None, out, DataConfig(resolution=16))
    shard = ingested["shards"][0]
    trained = finetune.fn(
        out,
        [shard["name"]],
        16,
        ModelConfig(block_out_channels=(8, 16)),
        TrainConfig(steps=2, batch_size=4, warmup_steps=0, autoencoder_steps=5),
        RUNTIME,
    )
    maps = score_shard.fn(out, shard, trained["fingerprint"], ScoreConfig(draws=2, batch_size=8), RUNTIME)["maps"]
    yield {"out": out, "shard": shard, "maps": maps, "fingerprint": trained["fingerprint"]}
    mp.undo()


def _rank(scored: dict, config: RankConfig):
    from gcmine.tasks.rank import rank_shard

    result = rank_shard.fn(scored["out"], scored["shard"], scored["maps"], scored["fingerprint"], 3, config, RUNTIME)
    return RunStore(scored["out"]).read_parquet(result["candidates"])


def test_feature_forwards_are_capped_and_equal(scored, monkeypatch) -> None:
    seen: list[int] = []
    original = PixelDiffusion.decoder_features

    def spy(self, x0, cond, t, noise, block):
        seen.append(x0.shape[0] * noise.shape[0])  # UNet inputs of this call (images x draws)
        return original(self, x0, cond, t, noise, block)

    monkeypatch.setattr(PixelDiffusion, "decoder_features", spy)
    wide = _rank(scored, RankConfig(per_image=2, feature_draws=2, feature_batch=64))
    assert max(seen) == 20  # 10 images x 2 draws: one call
    seen.clear()
    narrow = _rank(scored, RankConfig(per_image=2, feature_draws=2, feature_batch=6))
    assert max(seen) <= 6 and len(seen) == 4  # 3 images x 2 draws per call: 3 + 3 + 3 + 1 images
    for col in ("image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality"):
        assert wide[col].tolist() == narrow[col].tolist()
    np.testing.assert_allclose(np.stack(wide["feature"]), np.stack(narrow["feature"]), rtol=1e-5, atol=1e-6)


def test_typical_pooling_weights_each_patch_by_its_map(scored, monkeypatch) -> None:
    """rank.feature_pool=typical: the same patches, each feature the average of the feature map
    over the patch weighted by how far the image's map exceeds its median there."""
    import torch
    import torch.nn.functional as F

    from gcmine.tasks.infra.artifacts import unpack_map_rows
    from gcmodels.mining.patches import scale_boxes, typical_weights

    captured = []
    original = PixelDiffusion.decoder_features

    def spy(self, x0, cond, t, noise, block):
        out = original(self, x0, cond, t, noise, block)
        captured.append(out.clone())
        return out

    monkeypatch.setattr(PixelDiffusion, "decoder_features", spy)
    plain = _rank(scored, RankConfig(per_image=2, feature_draws=1))
    captured.clear()
    typical = _rank(scored, RankConfig(per_image=2, feature_draws=1, feature_pool="typical"))
    assert len(captured) == 1  # 10 images in one forward, the shard's map order
    fmap = captured[0]
    for col in ("image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality"):
        assert plain[col].tolist() == typical[col].tolist()
    maps_df = RunStore(scored["out"]).read_parquet(scored["maps"])
    maps = unpack_map_rows(maps_df)
    assert maps[0].shape == (8, 8)  # the latent grid: the task resamples each map to the working image first
    row_of = {iid: i for i, iid in enumerate(maps_df["image_id"])}
    checked = 0
    for r in typical[typical["feature"].map(len) > 0].itertuples():
        i = row_of[r.image_id]
        working = F.interpolate(torch.from_numpy(maps[i])[None, None], size=(16, 16), mode="bilinear")[:, 0]
        w = typical_weights(working, tuple(fmap.shape[-2:]))[0, 0]
        fx0, fy0, fx1, fy1 = scale_boxes(
            np.array([r.wx0, r.wy0, r.wx1, r.wy1]), (16, 16), (fmap.shape[-1], fmap.shape[-2])
        )
        box = (slice(fy0, fy1), slice(fx0, fx1))  # the working box on the 8 x 8 feature grid
        wb = w[box]
        if wb.sum() > 0:
            expected = (fmap[i][:, box[0], box[1]] * wb).sum(dim=(1, 2)) / wb.sum()
            checked += 1
        else:
            expected = fmap[i][:, box[0], box[1]].mean(dim=(1, 2))
        np.testing.assert_allclose(r.feature, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert checked >= 10
    assert not np.allclose(np.stack(plain["feature"]), np.stack(typical["feature"]))


def test_losers_of_the_shard_carry_no_feature(scored) -> None:
    cand = _rank(scored, RankConfig(per_image=2, per_label=3, feature_draws=1))
    has = cand["feature"].map(len) > 0
    assert has.groupby(cand["label"]).sum().tolist() == [3, 3]  # the shard's 3 best per label
    for _, group in cand.groupby("label"):
        best = group.sort_values("typicality", ascending=False, kind="stable").head(3)
        assert has[best.index].all()


def test_out_of_memory_names_the_setting(scored, monkeypatch) -> None:
    def oom(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(PixelDiffusion, "decoder_features", oom)
    with pytest.raises(OutOfMemory, match=r"lower rank\.feature_batch \(now 64\)"):
        _rank(scored, RankConfig(feature_draws=1))


def _io_under_slot(monkeypatch, module, names=("read_parquet", "write_parquet")) -> tuple[dict, list]:
    """Replace `module.gpu_slot` by a recording one and spy on the store's `names`: returns the
    slot's record ({"now": held, "slots": entries}) and the (method, slot held) of every call."""
    from contextlib import contextmanager

    inside = {"now": False, "slots": 0}
    io: list[tuple[str, bool]] = []

    @contextmanager
    def slot(device, runtime):
        inside["now"], inside["slots"] = True, inside["slots"] + 1
        try:
            yield
        finally:
            inside["now"] = False

    def spy(name):
        original = getattr(RunStore, name)

        def call(self, *args, **kwargs):
            io.append((name, inside["now"]))
            return original(self, *args, **kwargs)

        return call

    monkeypatch.setattr(module, "gpu_slot", slot)
    for name in names:
        monkeypatch.setattr(RunStore, name, spy(name))
    return inside, io


def test_score_holds_the_gpu_for_its_compute_only(scored, monkeypatch) -> None:
    """score reads its shard and writes its tables outside the GPU slot (issue 20): another
    worker's shard can be read or written while this one computes."""
    import gcmine.tasks.score as score

    inside, io = _io_under_slot(monkeypatch, score, ("read_parquet", "write_parquet", "read_bytes"))
    score.score_shard.fn(
        scored["out"], scored["shard"], scored["fingerprint"], ScoreConfig(draws=2, batch_size=8), RUNTIME
    )
    assert inside["slots"] == 1
    assert any(n == "read_parquet" for n, _ in io) and sum(n == "write_parquet" for n, _ in io) == 2
    assert not [n for n, held in io if held], io


def test_rank_holds_the_gpu_for_its_features_only(scored, monkeypatch) -> None:
    """rank reads the maps, manifest and images and writes its candidates outside the GPU slot."""
    import gcmine.tasks.rank as rank

    inside, io = _io_under_slot(monkeypatch, rank)
    _rank(scored, RankConfig(per_image=2, feature_draws=2))
    assert inside["slots"] == 1 and sum(n == "write_parquet" for n, _ in io) == 1
    assert not [n for n, held in io if held], io
