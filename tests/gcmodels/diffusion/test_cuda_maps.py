"""On a CUDA device (marker `gpu`: skipped without one): the maps and a training step agree with the
CPU's. Noise is drawn on the CPU by the estimator, so only the arithmetic differs (TF32
convolutions, kernel order): the tolerances are those of fp32 with TF32."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_pixel import tiny_pixel

from gcmodels.mining.typicality import TypicalityEstimator

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow_matching"])
def test_pixel_maps_on_cuda_equal_the_cpu_maps(prediction: str) -> None:
    model = tiny_pixel(prediction=prediction)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x0, cond = model.encode(images), model.label_index(["a", "b", "a", "b"])
    est = TypicalityEstimator(draws=4, batch_size=8, seed=0)
    cpu = est.maps(model, x0, cond)
    gpu_model = copy.deepcopy(model).to("cuda")
    gpu = est.maps(gpu_model, x0.cuda(), cond.cuda()).cpu()
    scale = cpu.abs().max()
    assert torch.isfinite(gpu).all()
    assert torch.allclose(gpu, cpu, atol=1e-2 * float(scale), rtol=1e-2), float((gpu - cpu).abs().max() / scale)


def test_memory_probe_on_cuda_leaves_the_model_as_it_was() -> None:
    """`probe_step_memory` on CUDA: a batch of 2 takes more than a batch of 1; the weights, the
    gradients (none) and the mode are as before; a tiny free memory asks for checkpointing."""
    from gcmodels.diffusion.training import checkpointing_needed, probe_step_memory

    model = tiny_pixel(resolution=32, channels=(16, 32)).to("cuda")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    step = probe_step_memory(model, x, torch.tensor([1]), "bf16")
    assert (
        step is not None and step["per_sample"] > 0 and step["grads"] == 4 * sum(p.numel() for p in model.parameters())
    )
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert checkpointing_needed(step["per_sample"], step, 8)[0]
    free, _ = torch.cuda.mem_get_info()
    assert not checkpointing_needed(free, step, 8)[0]


def test_training_on_cuda_with_the_fused_adamw_follows_the_cpu() -> None:
    """A few fp32 steps on CUDA (fused AdamW, TF32 off) give the CPU's losses within float tolerance."""
    from gcmodels.diffusion.training import train_diffusion

    def run(device: str) -> list[float]:
        model = tiny_pixel().to(device)
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        cond = torch.tensor([1, 2] * 4)
        result = train_diffusion(
            model,
            images,
            cond,
            steps=5,
            batch_size=4,
            lr=1e-3,
            warmup_steps=0,
            weight_decay=1e-2,
            grad_clip=1.0,
            label_dropout=0.1,
            checkpoint_every=100,
            generator=torch.Generator().manual_seed(2),
        )
        return [r["loss"] for r in result.history]

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu, gpu = run("cpu"), run("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert gpu == pytest.approx(cpu, rel=1e-3, abs=1e-4)
