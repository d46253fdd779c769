"""On a CUDA device (marker `gpu`: skipped without one): the maps and a training step agree with the
CPU's. Noise is drawn on the CPU by the estimator, so only the arithmetic differs (TF32
convolutions, kernel order): the tolerances are those of fp32 with TF32."""

from __future__ import annotations

import copy

import pytest
import torch

from gcmodels.diffusion import PixelDiffusion
from gcmodels.mining.typicality import TypicalityEstimator

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow_matching"])
def test_pixel_maps_on_cuda_equal_the_cpu_maps(prediction: str) -> None:
    model = PixelDiffusion.create(
        ["a", "b"],
        resolution=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=100,
        beta_schedule="linear",
        prediction=prediction,
        generator=torch.Generator().manual_seed(0),
    ).eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x0, cond = model.encode(images), model.label_index(["a", "b", "a", "b"])
    est = TypicalityEstimator(draws=4, batch_size=8, seed=0)
    cpu = est.maps(model, x0, cond)
    gpu_model = copy.deepcopy(model).to("cuda")
    gpu = est.maps(gpu_model, x0.cuda(), cond.cuda()).cpu()
    scale = cpu.abs().max()
    assert torch.isfinite(gpu).all()
    assert torch.allclose(gpu, cpu, atol=1e-2 * float(scale), rtol=1e-2), float((gpu - cpu).abs().max() / scale)
