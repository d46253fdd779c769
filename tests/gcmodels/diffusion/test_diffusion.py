"""Tests of the conditional pixel diffusion model: construction, I/O, labels, features."""

from __future__ import annotations

import json

import pytest
import torch

from gcmodels.diffusion import NULL_LABEL, PixelDiffusion, validate_label_vocabulary
from gcmodels.diffusion.parametrisation import eps_from_flow, eps_from_v, flow_training_sigmas


def _tiny(labels=("a", "b"), seed: int = 0, **kw) -> PixelDiffusion:
    args = dict(
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(seed),
    )
    args.update(kw)
    return PixelDiffusion.create(list(labels), **args).eval()


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 8, 8, generator=g)
    t = torch.randint(0, 100, (b,), generator=g)
    cond = torch.tensor([0, 1, 2][:b])
    return x, t, cond


def test_save_load_round_trip(tmp_path) -> None:
    model = _tiny(labels=("cat", "dog", "émeu"))
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "gcmine_model.json").read_text())
    assert meta["labels"] == ["cat", "dog", "émeu"] and meta["resolution"] == 8
    loaded = PixelDiffusion.load(tmp_path / "m").eval()
    assert loaded.labels == model.labels
    assert loaded.resolution == 8
    assert loaded.num_train_timesteps == 100
    assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)
    x, t, _ = _inputs()
    cond = torch.tensor([0, 1, 3])
    with torch.inference_mode():
        assert torch.equal(loaded.predict_noise(x, t, cond), model.predict_noise(x, t, cond))
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q)


def test_load_without_metadata_names_the_folder(tmp_path) -> None:
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        PixelDiffusion.load(folder)
    assert str(folder) in str(err.value)
    assert "gcmine_model.json" in str(err.value)


def test_create_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = _tiny(seed=0), _tiny(seed=0), _tiny(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_label_index() -> None:
    model = _tiny(labels=("a", "b", "c"))
    idx = model.label_index([None, "a", "c", "b", None])
    assert idx.dtype == torch.long
    assert idx.tolist() == [NULL_LABEL, 1, 3, 2, 0]
    assert model.label_index([]).tolist() == []


def test_label_index_unknown_label_is_named() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="zebra"):
        model.label_index(["a", "zebra"])


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        ([], "at least one label"),
        (["a", "b", "a"], "'a'"),
        (["a", " "], "non-empty"),
        (["a", ""], "non-empty"),
        (["a", 3], "non-empty"),
    ],
)
def test_validate_label_vocabulary_errors(labels, needle) -> None:
    with pytest.raises(ValueError) as err:
        validate_label_vocabulary(labels)
    assert needle in str(err.value)


def test_validate_label_vocabulary_ok() -> None:
    assert validate_label_vocabulary(["x", "y"]) == ("x", "y")
    assert validate_label_vocabulary(iter(["x"])) == ("x",)


def test_create_rejects_bad_vocabulary_and_resolution() -> None:
    with pytest.raises(ValueError, match="distinct"):
        _tiny(labels=("a", "a"))
    with pytest.raises(ValueError, match="resolution 10 is not divisible by 4"):
        _tiny(resolution=10, block_out_channels=(8, 16, 16))
    with pytest.raises(ValueError, match="resolution 9"):
        _tiny(resolution=9)


def test_constructor_checks_class_embeddings() -> None:
    small = _tiny(labels=("a",))  # 2 class embeddings
    with pytest.raises(ValueError, match="class embeddings"):
        PixelDiffusion(small.unet, small.scheduler, ["a", "b"])


def test_encode_and_add_noise() -> None:
    model = _tiny()
    img = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    x0 = model.encode(img)
    assert x0.dtype == torch.float32
    assert x0[0, 0, 0, 0].item() == -1.0 and x0[0, 1, 0, 0].item() == 1.0
    assert x0[0, 2, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    with pytest.raises(TypeError):
        model.encode(img.float())
    eps = torch.randn_like(x0)
    t = torch.tensor([40])
    abar = model.alphas_cumprod[40]
    assert torch.allclose(model.add_noise(x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps)


def test_predict_noise_shape_and_label_dependence() -> None:
    model = _tiny()
    x, t, _ = _inputs(2)
    with torch.inference_mode():
        p1 = model.predict_noise(x, t, torch.tensor([1, 1]))
        p2 = model.predict_noise(x, t, torch.tensor([2, 2]))
    assert p1.shape == x.shape
    assert not torch.equal(p1, p2)


def test_training_loss_shape() -> None:
    model = _tiny()
    x, _, cond = _inputs(3)
    loss = model.training_loss(x, cond, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and torch.isfinite(loss).all() and (loss > 0).all()


def test_decoder_features_shape_and_determinism() -> None:
    model = _tiny()
    x, _, cond = _inputs(3)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        f0 = model.decoder_features(x, cond, 10, noise, 0)
        f0b = model.decoder_features(x, cond, 10, noise, 0)
        f1 = model.decoder_features(x, cond, 10, noise, 1)
    assert f0.shape == (3, 16, 8, 8)  # reversed channels, output of the first decoder level (upsampled)
    assert f1.shape == (3, 8, 8, 8)
    assert f0.dtype == torch.float32 and torch.isfinite(f0).all()
    assert torch.equal(f0, f0b)
    # hooks are removed
    assert not model.unet.up_blocks[0]._forward_hooks


def test_decoder_features_average_over_draws() -> None:
    model = _tiny()
    x, _, cond = _inputs(2)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        both = model.decoder_features(x, cond, 20, noise, 1)
        a = model.decoder_features(x, cond, 20, noise[:1], 1)
        b = model.decoder_features(x, cond, 20, noise[1:], 1)
    assert torch.allclose(both, (a + b) / 2, atol=1e-5)


def test_decoder_features_rejects_bad_block() -> None:
    model = _tiny()
    x, _, cond = _inputs(1)
    with pytest.raises(ValueError, match="feature block 2 out of range"):
        model.decoder_features(x, cond[:1], 10, torch.zeros(1, 3, 8, 8), 2)


@pytest.mark.parametrize("prediction", ["v_prediction", "flow_matching"])
def test_parametrisation_round_trips_and_trains(prediction, tmp_path) -> None:
    model = _tiny(prediction=prediction)
    assert model.prediction == prediction
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "gcmine_model.json").read_text())["prediction"] == prediction
    loaded = PixelDiffusion.load(tmp_path / "m").eval()
    assert loaded.prediction == prediction
    x, t, cond = _inputs()
    with torch.inference_mode():
        assert torch.equal(loaded.predict_noise(x, t, cond), model.predict_noise(x, t, cond))
    loss = model.training_loss(x, cond, generator=torch.Generator().manual_seed(0))
    again = model.training_loss(x, cond, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and torch.isfinite(loss).all() and torch.equal(loss, again)


def test_training_targets_are_the_parametrisations_own() -> None:
    """The loss is the MSE to eps, to v = sqrt(abar) eps - sqrt(1 - abar) x0, or to the flow
    velocity eps - x0 at s drawn from the logit-normal density: checked with a network that
    returns a constant, against the targets rebuilt from the same generator draws."""
    from gcmodels.diffusion.parametrisation import flow_training_sigmas

    x, _, cond = _inputs()
    for prediction in ("epsilon", "v_prediction", "flow_matching"):
        model = _tiny(prediction=prediction)
        model._denoise = lambda x_in, timestep, c: torch.zeros_like(x_in)
        loss = model.training_loss(x, cond, generator=torch.Generator().manual_seed(4))
        g = torch.Generator().manual_seed(4)
        if prediction == "flow_matching":
            flow_training_sigmas(3, g)
            eps = torch.randn(x.shape, generator=g)
            target = eps - x
        else:
            t = torch.randint(0, model.num_train_timesteps, (3,), generator=g)
            eps = torch.randn(x.shape, generator=g)
            abar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
            target = eps if prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x
        assert torch.allclose(loss, target.pow(2).flatten(1).mean(1), atol=1e-6), prediction


def test_unknown_prediction_is_refused() -> None:
    with pytest.raises(ValueError, match="prediction must be one of"):
        _tiny(prediction="x0")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow_matching"])
def test_eps_weighted_training_loss_is_the_eps_space_error(prediction) -> None:
    """train.loss_weighting=eps: whatever the parametrisation, each sample's loss is the squared
    error of the prediction read in eps space (the quantity the typicality maps measure)."""
    model = _tiny(prediction=prediction)
    x0 = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = torch.tensor([0, 1, 2, 1, 2, 0])
    with torch.no_grad():
        native = model.training_loss(x0, cond, torch.Generator().manual_seed(5))
        weighted = model.training_loss(x0, cond, torch.Generator().manual_seed(5), weighting="eps")
        # the same draws, by hand: the prediction converted to eps, against the drawn eps
        g = torch.Generator().manual_seed(5)
        if prediction == "flow_matching":
            s = flow_training_sigmas(6, g, shift=model.flow_shift)
            eps = torch.randn(x0.shape, generator=g)
            sc = s.view(-1, 1, 1, 1)
            x_s = (1 - sc) * x0 + sc * eps
            eps_hat = eps_from_flow(model._denoise(x_s, s * model.flow_timesteps, cond), x_s, s)
        else:
            t = torch.randint(0, model.num_train_timesteps, (6,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            x_t = model.add_noise(x0, eps, t)
            pred = model._denoise(x_t, t, cond)
            eps_hat = pred if prediction == "epsilon" else eps_from_v(pred, x_t, model._abar(t, x0).view(-1))
    expected = (eps_hat - eps).pow(2).flatten(1).mean(1)
    assert torch.allclose(weighted, expected, rtol=1e-4, atol=1e-6)
    if prediction == "epsilon":
        assert torch.equal(weighted, native)
    else:
        assert not torch.allclose(weighted, native)
    assert model.resolved_loss_weighting("auto") == ("eps" if prediction == "v_prediction" else "native")
    with pytest.raises(ValueError, match="loss weighting must be"):
        model.training_loss(x0, cond, weighting="snr")
