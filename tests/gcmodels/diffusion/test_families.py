"""Family detection before anything is loaded, refusals, and what every family must do alike:
the typicality map of a network exact under the label in a region is positive exactly there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from sd_tiny import build_flux_like

from gcmodels.diffusion import ModelLayoutError, UnsupportedModel, families, inspect_base, load_base
from gcmodels.mining.typicality import TypicalityEstimator

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "DiTPipeline")


def test_every_family_is_a_module_found_by_discovery() -> None:
    found = families()
    assert set(found) == {"sd", "sdxl", "sd3", "dit"}
    assert {cls.pipeline_class for cls in found.values()} == set(SUPPORTED)
    for key, cls in found.items():
        assert cls.family == key and cls.__module__ == f"gcmodels.diffusion.{key}"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "FluxPipeline: Flux (dev, schnell) is guidance- or step-distilled"),
        ({"pipeline": "FluxPipeline", "guidance_embeds": False}, "FluxPipeline: Flux"),
        ({"pipeline": "MyFluxPipeline"}, "embeds the guidance scale (guidance_embeds)"),
        (
            {"pipeline": "PixArtAlphaPipeline", "guidance_embeds": False},
            "PixArtAlphaPipeline (parts: scheduler, text_encoder",
        ),
    ],
)
def test_unsupported_models_are_refused_naming_the_family_and_the_supported_ones(tmp_path, kwargs, words) -> None:
    path = build_flux_like(tmp_path / "m", **kwargs)
    with pytest.raises(UnsupportedModel) as err:
        inspect_base(path)
    msg = str(err.value)
    assert words in msg and str(path) in msg
    assert all(name in msg for name in SUPPORTED)
    assert isinstance(err.value, ValueError)


def test_a_guidance_distilled_unet_is_refused(tiny_sd_dir, tmp_path) -> None:
    lcm = shutil.copytree(tiny_sd_dir, tmp_path / "lcm")
    cfg = json.loads((lcm / "unet" / "config.json").read_text())
    (lcm / "unet" / "config.json").write_text(json.dumps({**cfg, "time_cond_proj_dim": 256}))
    with pytest.raises(
        UnsupportedModel, match=r"time_cond_proj_dim=256.*guidance-distilled model has no trained unconditional branch"
    ):
        inspect_base(lcm)


def test_no_model_index_names_what_is_missing(tiny_sd_dir, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_sd_dir / "unet", bare / "unet")
    with pytest.raises(
        ModelLayoutError, match=r"missing model_index.json, vae/, text_encoder/, tokenizer/, scheduler/"
    ):
        inspect_base(bare)
    with pytest.raises(ModelLayoutError, match="does not exist"):
        inspect_base(tmp_path / "nowhere")


def test_load_base_checks_before_loading(tmp_path) -> None:
    path = build_flux_like(tmp_path / "flux")
    with pytest.raises(UnsupportedModel):
        load_base(path, ["a"])


# ---------------------------------------------------------------------- every family, built tiny by the test
LABELS = {
    "sd": ["red car", "blue car"],
    "sdxl": ["red car", "blue car"],
    "sd3": ["red car", "blue car"],
    "dit": ["3", "7"],
}
PIPELINES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "dit": "DiTPipeline",
}


@pytest.fixture(scope="module")
def sd2_v_dir(tmp_path_factory) -> Path:
    from sd_tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd2v") / "sd2", prediction_type="v_prediction")


@pytest.fixture(scope="module", params=["sd", "sd2-v", "sdxl", "sd3", "dit"])
def family_dir(request, tiny_sd_dir, sd2_v_dir, tiny_sdxl_dir, tiny_sd3_dir, tiny_dit_dir) -> tuple[str, Path]:
    """(family, directory) of each family, SD 1.x/2.x twice: eps (1.x) and v-prediction (2.x 768-v)."""
    dirs = {"sd": tiny_sd_dir, "sd2-v": sd2_v_dir, "sdxl": tiny_sdxl_dir, "sd3": tiny_sd3_dir, "dit": tiny_dit_dir}
    return request.param.split("-")[0].replace("sd2", "sd"), dirs[request.param]


def _latents(model, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_each_family_is_detected_from_its_configs(family_dir) -> None:
    family, path = family_dir
    info = inspect_base(path)
    assert info.family == family and info.pipeline == PIPELINES[family]
    assert info.parameters and info.parameters > 0 and info.feature_blocks == 2
    assert info.prediction == {"sd3": "flow_matching"}.get(family, "v_prediction" if path.name == "sd2" else "epsilon")
    assert info.conditioning == ("class" if family == "dit" else "prompt")
    assert info.fixed_resolution == (family == "dit")


def test_typicality_of_an_exact_network_is_positive_exactly_in_its_region(family_dir) -> None:
    """The family's model with its network replaced by one exact under the label inside a region
    (in the family's own parametrisation and input scale, 0 under the null label): through the
    family's conversion to eps space, the map is positive exactly there and equals the null
    branch's eps-space error computed by hand. Eps (SD 1.x, SDXL, DiT), flow (SD3), and v (SD 2.x)."""
    from stub_schedule import exact_region_denoiser, null_branch_error

    family, path = family_dir
    model = load_base(path, LABELS[family]).eval()
    assert model.prediction == inspect_base(path).prediction
    x0 = _latents(model, 1)[0]
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[1:5, 3:7] = True
    model._denoise = exact_region_denoiser(model, x0, region)
    est = TypicalityEstimator(draws=6, batch_size=8, seed=1)
    maps = est.maps(model, x0[None].expand(2, -1, -1, -1), torch.tensor([1, 2]))
    for m in maps:
        assert torch.equal(m > 0, region)
        assert torch.equal(m[~region], torch.zeros(int((~region).sum())))
    t, eps = est.sample_draws(model.num_train_timesteps, tuple(x0.shape))
    assert torch.allclose(maps[0][region], null_branch_error(model, x0, t, eps)[region], rtol=1e-4, atol=1e-6)


def test_each_family_trains_scores_features_saves_and_reloads_in_its_pipeline(family_dir, tmp_path) -> None:
    """Two LoRA training steps, then: finite losses, maps and features of the family's shapes; the
    saved directory (adapter merged) loads in the family's diffusers pipeline class and back in
    gcmine with the same predictions."""
    import diffusers

    from gcmodels.diffusion import load_any_model
    from gcmodels.diffusion.training import train_diffusion

    family, path = family_dir
    model = load_base(path, LABELS[family]).enable_lora(2, generator=torch.Generator().manual_seed(0))
    assert all("lora_" in n for n, p in model.network.named_parameters() if p.requires_grad)
    z = _latents(model, 4)
    result = train_diffusion(
        model,
        z,
        torch.tensor([1, 2, 1, 2]),
        steps=2,
        batch_size=2,
        lr=1e-2,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=1.0,
        label_dropout=0.5,
        checkpoint_every=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    maps = TypicalityEstimator(draws=2, batch_size=8).maps(model, z[:2], torch.tensor([1, 2]))
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    noise = torch.randn(2, *z.shape[1:], generator=torch.Generator().manual_seed(1))
    feats = model.decoder_features(z[:2], torch.tensor([1, 2]), 161, noise, -1)
    assert feats.dim() == 4 and feats.shape[0] == 2 and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match=r"feature block 2 out of range: the .* has 2 (decoder|transformer) blocks"):
        model.decoder_features(z[:2], torch.tensor([1, 2]), 161, noise, 2)

    model.save(tmp_path / "tuned")
    index = json.loads((tmp_path / "tuned" / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[family]
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(tmp_path / "tuned")
    assert type(pipe).__name__ == PIPELINES[family]
    loaded = load_any_model(tmp_path / "tuned").eval()
    assert type(loaded) is type(model) and loaded.labels == model.labels and loaded.lora is None
    x_t, t, cond = (
        model.add_noise(z[:2], noise, torch.tensor([100, 600])),
        torch.tensor([100, 600]),
        torch.tensor([0, 2]),
    )
    with torch.no_grad():
        assert torch.allclose(loaded.predict_noise(x_t, t, cond), model.eval().predict_noise(x_t, t, cond), atol=1e-5)


def test_sdxl_conditioning_is_the_pipelines(tiny_sdxl_dir) -> None:
    """Prompt states and pooled embeds of a label, and the null conditioning (zeros, with
    force_zeros_for_empty_prompt), exactly as StableDiffusionXLPipeline.encode_prompt builds them."""
    from diffusers import StableDiffusionXLPipeline

    model = load_base(tiny_sdxl_dir, ["red car", "blue car"])
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pe, npe, pp, npp = pipe.encode_prompt("An image of blue car.", device="cpu", do_classifier_free_guidance=True)
    c = model.conditioning()
    assert torch.allclose(c["hidden"][2], pe[0], atol=1e-6) and torch.allclose(
        c["pooled"][2], pp[0], atol=1e-6
    )  # index 2: "blue car"
    assert torch.equal(c["hidden"][0], npe[0]) and torch.equal(c["pooled"][0], npp[0]) and not c["pooled"][0].any()
    # the UNet sees time ids of the image size (H, W, 0, 0, H, W), as the pipeline's _get_add_time_ids
    seen = {}
    model.unet.register_forward_pre_hook(lambda m, a, kw: seen.update(kw["added_cond_kwargs"]), with_kwargs=True)
    model.predict_noise(torch.zeros(1, 4, 8, 12), torch.tensor([10]), torch.tensor([1]))
    assert seen["time_ids"].tolist() == [[32.0, 48.0, 0.0, 0.0, 32.0, 48.0]]


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_conditioning_is_the_pipelines_with_or_without_t5(tmp_path, t5) -> None:
    from diffusers import StableDiffusion3Pipeline
    from sd_tiny import build_tiny_sd3

    path = build_tiny_sd3(tmp_path / "sd3", t5=t5)
    info = inspect_base(path)
    assert bool(info.notes) == (not t5)
    model = load_base(path, ["red car"])
    assert (model.text_encoder_3 is None) == (not t5)
    # without T5, diffusers needs the absent parts named (as its docs show for dropping T5)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        path, **({} if t5 else {"text_encoder_3": None, "tokenizer_3": None})
    )
    pe, npe, pp, npp = pipe.encode_prompt(
        "An image of red car.", None, None, device="cpu", do_classifier_free_guidance=True
    )
    c = model.conditioning()
    assert c["hidden"].shape[1:] == pe.shape[1:] == (16 + 256, 32)
    assert torch.allclose(c["hidden"][1], pe[0], atol=1e-5) and torch.allclose(c["pooled"][1], pp[0], atol=1e-5)
    assert torch.allclose(c["hidden"][0], npe[0], atol=1e-5) and torch.allclose(c["pooled"][0], npp[0], atol=1e-5)
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["text_encoder_3"][0] == (
        "transformers" if t5 else None
    )


def test_sd3_flow_matching_timesteps_padding_and_limits(tiny_sd3_dir) -> None:
    """The SD3 transformer is asked at s x 1000 for the reference step's equal-SNR level, with the
    DDPM x_t rescaled onto the flow path; latents off the patch grid are padded and cropped back;
    a grid beyond the position embeddings is a clear error."""
    from gcmodels.diffusion.parametrisation import flow_sigma

    model = load_base(tiny_sd3_dir, ["red car"]).eval()
    assert model.flow_shift == 3.0 and model.num_train_timesteps == 1000
    seen = {}
    model.transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    x = torch.randn(1, 16, 6, 10)
    with torch.no_grad():
        out = model.predict_noise(x, torch.tensor([300]), torch.tensor([1]))
    s = flow_sigma(model.alphas_cumprod[300])
    assert out.shape == x.shape and seen["hidden_states"].shape == (1, 16, 6, 10)  # already on the grid
    assert float(seen["timestep"][0]) == pytest.approx(float(s) * 1000, rel=1e-5)
    with torch.no_grad():
        odd = model.predict_noise(torch.randn(1, 16, 7, 9), torch.tensor([300]), torch.tensor([1]))
    assert odd.shape == (1, 16, 7, 9) and seen["hidden_states"].shape == (1, 16, 8, 10)
    with pytest.raises(ValueError, match="position grid of 16x16 patches"):
        model.predict_noise(torch.randn(1, 16, 8, 40), torch.tensor([300]), torch.tensor([1]))


def test_dit_classes_null_class_and_fixed_size(tiny_dit_dir) -> None:
    from gcmodels.diffusion.dit import validate_class_map

    model = load_base(tiny_dit_dir, ["3", "7"])
    assert model.class_ids.tolist() == [10, 3, 7]  # index 0 -> the null class embedding (num_classes)
    seen = {}
    model.transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    model.predict_noise(torch.randn(3, 4, 8, 8), torch.tensor([5, 5, 5]), torch.tensor([0, 1, 2]))
    assert seen["class_labels"].tolist() == [10, 3, 7]
    named = load_base(tiny_dit_dir, ["shark", "hen"], class_map={"shark": 2, "hen": 8})
    assert named.class_ids.tolist() == [10, 2, 8]
    for labels, cmap, words in (
        (["shark"], None, r"labels without a class .*'shark'.*set model.class_map"),
        (["12"], None, "not class ids in 0..9"),
        (["a", "b"], {"a": 1, "b": 1}, "share class ids"),
        (["a", "c"], {"a": 1}, r"'c'.*model.class_map does not map them"),
    ):
        with pytest.raises(ValueError, match=words):
            load_base(tiny_dit_dir, labels, class_map=cmap)
    with pytest.raises(ValueError, match=r"fixed sample size 8x8.*data.resolution=32"):
        model.predict_noise(torch.randn(1, 4, 8, 12), torch.tensor([5]), torch.tensor([1]))
    assert validate_class_map([("a", "1"), ("b", " 2 ")], 10) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match=r"row 2: class_id '10'.*row 3: label 'a' is mapped twice.*row 4: class 1"):
        validate_class_map([("a", "1"), ("b", "10"), ("a", "3"), ("c", "1")], 10)
    # the embedding's own random label dropout is off: training is deterministic given the generator
    model.train()
    a = model.training_loss(
        torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.tensor([1, 2, 1, 2]),
        generator=torch.Generator().manual_seed(0),
    )
    b = model.training_loss(
        torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.tensor([1, 2, 1, 2]),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize(("family", "lora"), [("sdxl", 2), ("sd3", 0), ("dit", 0)])
def test_fine_tuning_interrupted_and_resumed_equals_uninterrupted(
    family, lora, tiny_sdxl_dir, tiny_sd3_dir, tiny_dit_dir, tmp_path
) -> None:
    """Full or LoRA fine-tuning of each family stopped at a checkpoint and resumed in a fresh model
    from the saved state ends with the weights and loss history of the uninterrupted run (SD3's
    flow-matching noise levels and DiT's labels come from the training generator only)."""
    from gcmodels.diffusion.training import train_diffusion

    path = {"sdxl": tiny_sdxl_dir, "sd3": tiny_sd3_dir, "dit": tiny_dit_dir}[family]

    class Stop(Exception):
        pass

    def fresh():
        m = load_base(path, LABELS[family])
        return m.enable_lora(lora, generator=torch.Generator().manual_seed(0)) if lora else m

    z = torch.randn(4, fresh().latent_channels, 8, 8, generator=torch.Generator().manual_seed(5))
    cond = torch.tensor([1, 2, 0, 1])

    def run(model, seed, **kw):
        return train_diffusion(
            model,
            z,
            cond,
            steps=4,
            batch_size=2,
            lr=1e-3,
            warmup_steps=0,
            weight_decay=1e-2,
            grad_clip=1.0,
            label_dropout=0.2,
            checkpoint_every=2,
            generator=torch.Generator().manual_seed(seed),
            lr_schedule="constant",
            **kw,
        )

    full = fresh()
    ref = run(full, 7)

    def stop_at_2(state: dict) -> None:
        torch.save(state, tmp_path / "ckpt.pt")
        raise Stop

    with pytest.raises(Stop):
        run(fresh(), 7, on_checkpoint=stop_at_2)
    resumed = fresh()
    out = run(resumed, 123, resume=torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert out.resumed_from == 2 and [r["loss"] for r in out.history] == [r["loss"] for r in ref.history]
    a, b = dict(full.network.named_parameters()), dict(resumed.network.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_variant_and_parameter_count_from_headers(tmp_path) -> None:
    from safetensors.torch import save_file

    from gcmodels.diffusion.latent import safetensors_parameters, weights_variant

    plain, fp16, sharded = (tmp_path / n for n in ("plain", "fp16", "sharded"))
    for d in (plain, fp16, sharded):
        d.mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, plain / "diffusion_pytorch_model.safetensors")
    save_file({"a": torch.zeros(3, 4, dtype=torch.float16)}, plain / "diffusion_pytorch_model.fp16.safetensors")
    save_file({"a": torch.zeros(3, 4, dtype=torch.float16)}, fp16 / "model.fp16.safetensors")
    save_file({"a": torch.zeros(2, 2)}, sharded / "diffusion_pytorch_model.fp16-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(7)}, sharded / "diffusion_pytorch_model.fp16-00002-of-00002.safetensors")
    assert weights_variant(plain) is None and safetensors_parameters(plain) == 17  # the plain weights only
    assert weights_variant(fp16) == "fp16" and safetensors_parameters(fp16) == 12
    assert weights_variant(sharded) == "fp16" and safetensors_parameters(sharded) == 11
