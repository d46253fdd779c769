"""The eps / v / flow-matching conversions and the signal-to-noise matching of noise levels."""

from __future__ import annotations

import pytest
import torch

from gcmodels.diffusion.parametrisation import (
    SD_REFERENCE_SCHEDULE,
    ddpm_alphas_cumprod,
    eps_from_flow,
    eps_from_v,
    flow_from_ddpm,
    flow_sigma,
    flow_training_sigmas,
    v_target,
)


def _draw(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    abar = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x0, eps, abar


def test_v_round_trip_and_error_scale() -> None:
    x0, eps, abar = _draw()
    a = abar.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = v_target(x0, eps, abar)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(eps_from_v(v, x_t, abar), eps, atol=1e-12)
    dv = torch.randn_like(v)  # an error in v is sqrt(abar) times it in eps
    assert torch.allclose(eps_from_v(v + dv, x_t, abar) - eps, a.sqrt() * dv, atol=1e-12)


def test_flow_round_trip_equal_snr_and_error_scale() -> None:
    x0, eps, abar = _draw(1)
    a = abar.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    s = flow_sigma(abar)
    assert torch.allclose(((1 - s) / s) ** 2, abar / (1 - abar))  # equal signal-to-noise ratio
    sc = s.view(-1, 1, 1, 1)
    x_s = (1 - sc) * x0 + sc * eps
    assert torch.allclose(flow_from_ddpm(x_t, abar), x_s, atol=1e-12)  # the same point, rescaled
    u = eps - x0
    assert torch.allclose(eps_from_flow(u, x_s, s), eps, atol=1e-12)
    du = torch.randn_like(u)
    assert torch.allclose(eps_from_flow(u + du, x_s, s) - eps, (1 - sc) * du, atol=1e-12)


def test_sd_reference_range_maps_to_the_documented_flow_levels() -> None:
    abar = ddpm_alphas_cumprod(**SD_REFERENCE_SCHEDULE)
    s = flow_sigma(abar[[100, 699]].double())
    assert s[0] == pytest.approx(0.26, abs=0.01) and s[1] == pytest.approx(0.77, abs=0.01)
    assert torch.all(flow_sigma(abar)[1:] > flow_sigma(abar)[:-1])  # monotone: later t, noisier s


def test_flow_training_density_is_seeded_and_shifted() -> None:
    a = flow_training_sigmas(4000, torch.Generator().manual_seed(0))
    b = flow_training_sigmas(4000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32 and bool(((a > 0) & (a < 1)).all())
    assert float(a.median()) == pytest.approx(0.5, abs=0.03)  # logit-normal(0, 1)
    shifted = flow_training_sigmas(4000, torch.Generator().manual_seed(0), shift=3.0)
    assert torch.allclose(shifted, 3 * a / (1 + 2 * a)) and float(shifted.median()) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="shift"):
        flow_training_sigmas(2, None, shift=0.0)
