"""`scoring_model`: with runtime.compile, scoring gets one compiled view per loaded model and
worker process; without it, the model itself. The loaded model stays eager for the other stages."""

from __future__ import annotations

from tiny_pixel import tiny_pixel

from gcmine.tasks.infra import models
from gcmodels.config import RuntimeConfig
from gcmodels.diffusion import ConditionalDiffusion


def test_scoring_model_compiles_once_per_model_and_only_when_asked(monkeypatch) -> None:
    calls: list[ConditionalDiffusion] = []
    original = ConditionalDiffusion.compiled

    def compiled(self, **kw):
        calls.append(self)
        return original(self, backend="aot_eager")  # inductor's C++ build takes minutes on this CPU

    monkeypatch.setattr(ConditionalDiffusion, "compiled", compiled)
    model, other = (tiny_pixel(resolution=8, num_train_timesteps=10) for _ in range(2))
    assert models.scoring_model(model, RuntimeConfig()) is model and not calls  # off by default
    on = RuntimeConfig(compile=True)
    view = models.scoring_model(model, on)
    assert view is not model and models.scoring_model(model, on) is view  # made once
    assert models.scoring_model(other, on) is not view
    assert calls == [model, other]
    assert type(model.unet).__name__ == "UNet2DModel"  # the cached model stays eager
