"""`ConditionalDiffusion.compiled`: a view whose denoiser runs through torch.compile, sharing the
model's weights and leaving the model eager. Compiled here with the `aot_eager` backend (the
same graph capture as inductor without generating C++, which takes minutes on a 2-core CPU);
inductor's speed is measured on a GPU (benchmarks/sd_gpu.py --compile, RESULTS 15)."""

from __future__ import annotations

import pytest
import torch
from tiny_pixel import tiny_pixel

from gcmodels.diffusion import PixelDiffusion
from gcmodels.mining.typicality import TypicalityEstimator


def _inputs(model: PixelDiffusion, n: int = 5):
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model.encode(images), model.label_index(["a", "b"] * (n // 2) + ["a"] * (n % 2))


@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_view_gives_the_eager_maps_and_shares_the_weights(channels_last: bool) -> None:
    model = tiny_pixel()
    x0, cond = _inputs(model)  # 5 images x 4 draws x 2 branches = 40 inputs: batches of 16, 16 and 8
    est = TypicalityEstimator(draws=4, batch_size=16, seed=0)
    eager = est.maps(model, x0, cond)
    view = model.compiled(backend="aot_eager", channels_last=channels_last)
    maps = est.maps(view, x0, cond)
    assert torch.allclose(maps, eager, atol=1e-5 * float(eager.abs().max()), rtol=1e-5)
    assert type(model.unet).__name__ == "UNet2DModel" and type(view.unet).__name__ == "OptimizedModule"
    assert {p.data_ptr() for p in view.parameters()} == {p.data_ptr() for p in model.parameters()}
    assert view.labels == model.labels and view.device == model.device
    # the model itself stays eager: features through forward hooks on its blocks still work
    feats = model.decoder_features(x0[:2], cond[:2], 10, torch.randn(2, *x0.shape[1:]), 0)
    assert feats.shape[0] == 2 and torch.isfinite(feats).all()


def test_a_network_that_is_not_a_direct_submodule_is_refused() -> None:
    class Odd(PixelDiffusion):
        @property
        def network(self):
            return torch.nn.Linear(1, 1)

    model = tiny_pixel()
    model.__class__ = Odd
    with pytest.raises(TypeError, match="not one of its direct submodules"):
        model.compiled(backend="aot_eager")
