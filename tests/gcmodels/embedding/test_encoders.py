"""Tests of gcmodels.embedding.encoders and gcmodels.embedding.autoencoders: the conv autoencoder / VAE encoders,
the linear autoencoder = PCA subspace, a tiny random CLIP directory, diffusion features of a
tiny PixelDiffusion, and make_encoder (CPU, tiny models, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from sklearn.exceptions import NotFittedError

from gcmodels.config import ConfigError, EmbedConfig, Settings
from gcmodels.diffusion import PixelDiffusion
from gcmodels.embedding.autoencoders import ConvAutoencoder, MLPAutoencoder, build_seeded, train_autoencoder
from gcmodels.embedding.encoders import (
    CLIPImageEncoder,
    ConvAutoencoderEncoder,
    ConvVAEEncoder,
    DiffusionFeatureEncoder,
    PixelPCAEncoder,
    fits_on_collection,
    make_encoder,
)


def _images(n: int, h: int = 12, w: int = 12, seed: int = 0) -> np.ndarray:
    """Two kinds of images (bright left half / bright top half) with noise: (n, h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 60, size=(n, h, w, 3)).astype(np.int64)
    out[::2, :, : w // 2] += 180
    out[1::2, : h // 2] += 180
    return np.clip(out, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ autoencoders


@pytest.mark.parametrize("cls", [ConvAutoencoderEncoder, ConvVAEEncoder])
def test_autoencoder_encoders_shape_metadata_and_determinism(cls):
    images = _images(24)
    enc = cls(4, 8, epochs=6, batch_size=8, lr=3e-3, width=4, seed=1)
    z = enc.fit(images).transform(images)
    assert z.shape == (24, 4) and z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_array_equal(z, enc.transform(images))  # the VAE embeds by the mean: no noise
    again = cls(4, 8, epochs=6, batch_size=8, lr=3e-3, width=4, seed=1).fit(images).transform(images)
    np.testing.assert_array_equal(z, again)
    losses = [row["loss"] for row in enc.history_]
    assert len(losses) == 6 and losses[-1] < losses[0]
    meta = enc.describe()
    assert meta["encoder"] == ("conv-vae" if cls is ConvVAEEncoder else "conv-autoencoder")
    assert meta["dim"] == 4 and meta["epochs"] == 6 and meta["size"] == 8 and meta["final_loss"] == losses[-1]
    assert meta["loss"] == ("elbo" if cls is ConvVAEEncoder else "mse") and meta["parameters"] > 0
    # other image sizes are resized to the same thumbnails
    assert enc.transform(_images(3, h=20, w=16)).shape == (3, 4)


def test_autoencoder_codes_separate_the_two_kinds():
    images = _images(40)
    z = ConvAutoencoderEncoder(2, 8, epochs=15, batch_size=8, lr=3e-3, width=4).fit_transform(images)
    a, b = z[::2], z[1::2]
    between = np.linalg.norm(a.mean(0) - b.mean(0))
    within = 0.5 * (a.std(0).mean() + b.std(0).mean())
    assert between > 2 * within


def test_autoencoder_errors():
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        ConvAutoencoderEncoder(4, 10).fit(_images(4))
    with pytest.raises(ValueError, match="epochs must be positive, got 0"):
        ConvAutoencoderEncoder(4, 8, epochs=0).fit(_images(4))
    with pytest.raises(ValueError, match="uint8"):
        ConvAutoencoderEncoder(4, 8).fit(np.zeros((3, 8, 8, 3)))
    with pytest.raises(NotFittedError):
        ConvVAEEncoder().transform(_images(2))


def test_conv_autoencoder_shapes_and_vae_loss():
    x = torch.rand(5, 3, 12, 12) * 2 - 1
    ae = ConvAutoencoder(12, 6, width=4)
    assert ae.encode(x).shape == (5, 6) and ae(x).shape == x.shape
    vae = ConvAutoencoder(12, 6, width=4, variational=True, beta=0.0)
    loss = vae.loss(x, torch.Generator().manual_seed(0))
    assert loss.shape == (5,)
    # beta = 0 and zero posterior noise: the loss is the reconstruction MSE of the mean
    with torch.no_grad():
        vae.encoder[-1].bias[6:] = -1e4  # log-variance -> clamped at -30: sigma ~ 3e-7
        expected = (vae(x) - x).pow(2).flatten(1).mean(1)
        np.testing.assert_allclose(vae.loss(x, torch.Generator().manual_seed(0)).numpy(), expected.numpy(), rtol=1e-4)


def test_linear_autoencoder_spans_the_principal_subspace():
    """Baldi & Hornik (1989): the global optimum of a linear autoencoder with m hidden units
    projects onto the span of the top m principal axes."""
    rng = np.random.default_rng(0)
    n, d, m = 400, 8, 3
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scales = np.array([5.0, 4.0, 3.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    X = (rng.normal(size=(n, d)) * scales) @ basis.T
    X -= X.mean(axis=0)
    model = build_seeded(lambda: MLPAutoencoder(d, m, hidden=(), activation="none"), seed=0)
    history = train_autoencoder(
        model,
        torch.tensor(X, dtype=torch.float32),
        epochs=600,
        batch_size=n,
        lr=2e-2,
        generator=torch.Generator().manual_seed(0),
    )
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    decoder = model.decoder[0].weight.detach().numpy().astype(np.float64)  # (d, m): spans the image
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    top = vt[:m].T  # (d, m) top principal axes
    assert np.degrees(subspace_angles(decoder, top)).max() < 1.0
    # and the reconstruction error is PCA's: the variance of the discarded components
    pca_residual = (sv[m:] ** 2).sum() / (n * d)
    assert history[-1]["loss"] == pytest.approx(pca_residual, rel=0.02)


def test_train_autoencoder_reports_divergence():
    model = MLPAutoencoder(3, 2)
    data = torch.full((4, 3), float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        train_autoencoder(model, data, epochs=1, batch_size=2, lr=1e-3, generator=torch.Generator())


# ------------------------------------------------------------------ CLIP from a local directory


def test_clip_encoder_from_a_local_directory(tiny_clip_dir):
    images = _images(5, h=20, w=24)
    enc = CLIPImageEncoder(str(tiny_clip_dir), batch_size=2).fit(images)
    z = enc.transform(images)
    assert z.shape == (5, 8) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    # batching does not change the result
    np.testing.assert_allclose(CLIPImageEncoder(str(tiny_clip_dir), batch_size=5).fit().transform(images), z, atol=1e-5)
    meta = enc.describe()
    assert meta == {
        "encoder": "clip",
        "source": str(tiny_clip_dir),
        "dim": 8,
        "model_type": "clip_vision_model",
        "image_size": 16,
        "normalized": True,
    }
    made = make_encoder(EmbedConfig(method="clip", clip_path=str(tiny_clip_dir), batch_size=3))
    assert isinstance(made, CLIPImageEncoder) and made.batch_size == 3


def test_clip_encoder_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="not a local CLIP model directory"):
        CLIPImageEncoder(str(tmp_path / "nope")).fit()


# ------------------------------------------------------------------ diffusion features


@pytest.fixture(scope="module")
def tiny_diffusion():
    return PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=20,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize(("block", "grid", "dim"), [(0, 1, 16), (1, 1, 8), (-1, 2, 32)])
def test_diffusion_features(tiny_diffusion, block, grid, dim):
    images = _images(5, h=8, w=8)
    enc = DiffusionFeatureEncoder(tiny_diffusion, t_fraction=0.5, block=block, grid=grid, draws=2, batch_size=2, seed=3)
    enc.fit(images)
    z = enc.transform(images)
    assert z.shape == (5, dim) and z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_array_equal(z, enc.transform(images))  # the noise draws come from the seed
    # the average of the block output over each grid cell, computed by hand for one image
    x0 = tiny_diffusion.encode(torch.from_numpy(images[:1]).permute(0, 3, 1, 2))
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feat = tiny_diffusion.decoder_features(x0, torch.zeros(1, dtype=torch.long), enc.timestep, noise, block)
    h, w = feat.shape[-2:]
    cells = feat[0].reshape(-1, grid, h // grid, grid, w // grid).mean(dim=(2, 4))  # (F, grid, grid)
    np.testing.assert_allclose(z[0], cells.flatten().numpy(), rtol=1e-5, atol=1e-6)
    meta = enc.describe()
    assert meta["encoder"] == "diffusion-features" and meta["dim"] == dim and meta["timestep"] == 10
    assert meta["block"] == block and meta["grid"] == grid


def test_diffusion_features_resize_and_errors(tiny_diffusion):
    enc = DiffusionFeatureEncoder(tiny_diffusion, grid=1).fit()
    assert enc.transform(_images(3, h=16, w=12)).shape == (3, 16)
    with pytest.raises(ValueError, match="block 2 out of range"):
        DiffusionFeatureEncoder(tiny_diffusion, block=2).fit()
    with pytest.raises(ValueError, match="t_fraction must be in"):
        DiffusionFeatureEncoder(tiny_diffusion, t_fraction=1.5).fit()


# ------------------------------------------------------------------ factory and config


def test_make_encoder_for_every_method(tiny_diffusion):
    assert isinstance(make_encoder(EmbedConfig()), PixelPCAEncoder)
    ae = make_encoder(EmbedConfig(method="autoencoder", dim=7, size=8, epochs=2, batch_size=4, lr=1e-2, seed=5))
    assert isinstance(ae, ConvAutoencoderEncoder) and not isinstance(ae, ConvVAEEncoder)
    assert (ae.n_components, ae.size, ae.epochs, ae.batch_size, ae.lr, ae.seed) == (7, 8, 2, 4, 1e-2, 5)
    vae = make_encoder(EmbedConfig(method="vae", beta=0.5))
    assert isinstance(vae, ConvVAEEncoder) and vae.beta == 0.5
    diff = make_encoder(
        EmbedConfig(method="diffusion", diffusion_block=1, diffusion_t=0.3, diffusion_grid=2), diffusion=tiny_diffusion
    )
    assert isinstance(diff, DiffusionFeatureEncoder) and diff.block == 1 and diff.t_fraction == 0.3 and diff.grid == 2
    with pytest.raises(ValueError, match="needs the fine-tuned model"):
        make_encoder(EmbedConfig(method="diffusion"))
    with pytest.raises(ValueError, match="a diffusion model was passed"):
        make_encoder(EmbedConfig(), diffusion=tiny_diffusion)


def test_fits_on_collection_and_shardwise_transform(tiny_diffusion, tiny_clip_dir):
    """Encoders that learn nothing from the images embed a collection shard by shard exactly as in
    one go (what lets the flow map the embed stage over shards); the fitted ones say they need the
    whole collection."""
    assert [fits_on_collection(m) for m in ("pca", "autoencoder", "vae", "clip", "diffusion")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match=r"unknown embed.method 'vit'"):
        fits_on_collection("vit")
    images = _images(7, h=8, w=8)
    for enc in (
        DiffusionFeatureEncoder(tiny_diffusion, grid=2, draws=2, batch_size=4, seed=1).fit(),
        CLIPImageEncoder(str(tiny_clip_dir), batch_size=4).fit(),
    ):
        assert type(enc).fits_on_collection is False
        whole = enc.transform(images)
        parts = np.concatenate([enc.transform(images[:3]), enc.transform(images[3:5]), enc.transform(images[5:])])
        np.testing.assert_allclose(parts, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({"method": "clip"}, ["embed", "clip_path"]),
        ({"method": "autoencoder", "size": 10}, ["embed", "size (10)", "multiple of 4"]),
        ({"method": "vit"}, ["embed.method"]),
        ({"epochs": 0}, ["embed.epochs"]),
        ({"diffusion_t": 2}, ["embed.diffusion_t"]),
    ],
)
def test_embed_config_errors_name_the_field(values, needles):
    with pytest.raises(ConfigError) as err:
        Settings.from_dict({"embed": values})
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_embed_config_default_is_pca():
    assert EmbedConfig().method == "pca" and EmbedConfig().dim == 32 and EmbedConfig().size == 16
