"""The collection autoencoder and the latent pixel model (model.latent_factor > 1): shapes, the
training (it learns, its latents are standardised, it is frozen and deterministic), images of
several shapes, and a PixelDiffusion that encodes, trains, samples and saves on its latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcmodels.diffusion import (
    CollectionAutoencoder,
    PixelDiffusion,
    Sampler,
    train_collection_autoencoder,
    train_diffusion,
)


def _smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Images with structure an autoencoder can learn: coloured blobs on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, 3, h, w), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        for c in range(3):
            a, b = rng.uniform(0, 1, 2)
            out[i, c] = np.clip(255 * (0.5 * a * xx + 0.3 * yy + b * blob), 0, 255)
    return torch.from_numpy(out)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_autoencoder_shapes_and_clear_errors() -> None:
    ae = CollectionAutoencoder(channels=4, factor=4, width=8)
    x = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 6) and z.dtype == torch.float32 and not z.requires_grad
    y = ae.decode(z)
    assert y.shape == (2, 3, 16, 24) and y.dtype == torch.uint8
    with pytest.raises(ValueError, match="18x24 is not a multiple of the autoencoder's factor 4"):
        ae.encode(torch.zeros(1, 3, 18, 24, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        ae.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"latents \(B, 4, h, w\)"):
        ae.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="power of 2"):
        CollectionAutoencoder(factor=3)


def test_training_learns_standardises_freezes_and_repeats() -> None:
    images = _smooth_images(24, 16, 16)
    ae = CollectionAutoencoder(channels=3, factor=2, width=16)
    torch.manual_seed(0)
    fresh = CollectionAutoencoder(channels=3, factor=2, width=16)
    fresh.load_state_dict(ae.state_dict())
    other = CollectionAutoencoder(channels=3, factor=2, width=16)
    other.load_state_dict(ae.state_dict())
    x = images.float() / 127.5 - 1.0
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(ae.decoder(ae.encoder(x)), x))
    result = train_collection_autoencoder(ae, images, steps=150, batch_size=8, lr=3e-3, crop=8, generator=_gen())
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(ae.decoder(ae.encoder(x)), x))
    assert result.steps == 150 and result.crop == 8 and len(result.history) == 150
    assert after < 0.25 * before, (before, after)  # it learnt the images, whole, from 8 px crops
    z = ae.encode(images)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    decoded = ae.decode(z).float()
    assert float((decoded - images.float()).abs().mean()) < float((images.float() - images.float().mean()).abs().mean())
    again = fresh  # the same initial weights, the same generator: the same autoencoder
    train_collection_autoencoder(again, images, steps=150, batch_size=8, lr=3e-3, crop=8, generator=_gen())
    # the same up to float summation order (the CPU kernels' threads), far from another generator's
    for k, v in ae.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, atol=1e-4, rtol=1e-3, msg=k)
    train_collection_autoencoder(other, images, steps=150, batch_size=8, lr=3e-3, crop=8, generator=_gen(1))
    assert float((other.encoder[0].weight - ae.encoder[0].weight).abs().max()) > 1e-2


def test_training_on_images_of_several_shapes_crops_within_the_smallest() -> None:
    images = [*_smooth_images(3, 12, 20).unbind(0), *_smooth_images(3, 16, 10, seed=1).unbind(0)]
    ae = CollectionAutoencoder(channels=2, factor=2, width=8)
    result = train_collection_autoencoder(ae, images, steps=5, batch_size=4, lr=1e-3, crop=32, generator=_gen())
    assert result.crop == 10  # at most the smallest side, a multiple of the factor
    assert ae.encode(images[0][None]).shape == (1, 2, 6, 10)
    with pytest.raises(ValueError, match="uint8 images"):
        train_collection_autoencoder(
            ae, [torch.zeros(3, 8, 8)], steps=1, batch_size=1, lr=1e-3, crop=None, generator=_gen()
        )


def _latent_model(**kw) -> PixelDiffusion:
    return PixelDiffusion.create(
        ["cat", "dog"],
        resolution=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=50,
        beta_schedule="linear",
        generator=_gen(),
        latent_factor=2,
        latent_channels=3,
        autoencoder_width=8,
        **kw,
    )


def test_latent_pixel_model_trains_on_its_latents_and_saves_them(tmp_path) -> None:
    model = _latent_model()
    assert model.latent_space and model.latent_factor == 2 and model.latent_channels == 3
    assert model.resolution == 16 and model.unet.config.sample_size == 8  # working side, UNet grid
    images = _smooth_images(8, 16, 16)
    train_collection_autoencoder(
        model.autoencoder, images, steps=20, batch_size=4, lr=1e-3, crop=None, generator=_gen()
    )
    ae_before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.unet.parameters()}
    cond = model.label_index(["cat", "dog"] * 4)
    train_diffusion(
        model, images, cond, steps=3, batch_size=4, lr=1e-3, warmup_steps=1, weight_decay=0.0, grad_clip=1.0,
        label_dropout=0.2, checkpoint_every=10, generator=_gen(),
    )  # fmt: skip
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in ae_before.items())  # frozen
    assert any(not torch.equal(v, model.unet.state_dict()[k]) for k, v in unet_before.items())  # trained
    z = model.encode(images)
    assert z.shape == (8, 3, 8, 8) == (8, *model.model_shape(16, 16))
    assert model.model_shape(16, 24) == tuple(model.encode(_smooth_images(1, 16, 24)).shape[1:]) == (3, 8, 12)
    x = Sampler(steps=2, clip=None, seed=0).sample(model, cond[:2], 1, (3, 8, 8))
    assert model.decode(x).shape == (2, 3, 16, 16)
    model.save(tmp_path / "m")
    loaded = PixelDiffusion.load(tmp_path / "m")
    assert loaded.latent_space and loaded.resolution == 16
    assert torch.equal(loaded.encode(images), z)
    t = torch.full((8,), 20)
    eps = torch.randn(z.shape, generator=_gen(1))
    with torch.no_grad():
        assert torch.equal(
            loaded.predict_noise(loaded.add_noise(z, eps, t), t, cond),
            model.predict_noise(model.add_noise(z, eps, t), t, cond),
        )


def test_pixel_model_without_autoencoder_is_unchanged() -> None:
    model = PixelDiffusion.create(
        ["cat"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=50,
        beta_schedule="linear",
    )
    assert not model.latent_space and model.latent_factor == 1 and model.autoencoder is None and model.resolution == 8
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(model.decode(model.encode(x)), x)
    assert model.model_shape(8, 16) == (3, 8, 16)
    with pytest.raises(ValueError, match=r"resolution 10 is not divisible by 4 \(2 UNet levels on latents 2 times"):
        PixelDiffusion.create(
            ["cat"], resolution=10, block_out_channels=(8, 16), layers_per_block=1, num_train_timesteps=50,
            beta_schedule="linear", latent_factor=2,
        )  # fmt: skip
