"""Tests of the Stable Diffusion model behind the conditional diffusion interface (tiny random SD)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fresh_imports import loaded
from sd_tiny import build_tiny_sd

from gcmodels.diffusion import LatentEncoder, ModelLayoutError, PixelDiffusion, inspect_base, load_any_model
from gcmodels.diffusion.sd import StableDiffusion
from gcmodels.mining.typicality import TypicalityEstimator
from gcmodels.prompts import render_prompt, validate_prompt_template

LABELS = ("old_cars", "São Paulo", "1950s")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="module")
def model(sd_dir) -> StableDiffusion:
    return StableDiffusion.from_base(sd_dir, LABELS).eval()


def _fresh(sd_dir, **kw) -> StableDiffusion:
    return StableDiffusion.from_base(sd_dir, LABELS, **kw).eval()


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def _noisy(b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g)


# ---------------------------------------------------------------------- import, layout, compatibility
def test_import_does_not_import_prefect(fresh_imports) -> None:
    assert len(fresh_imports["families"]) == 4  # every family module imported (in a fresh Python)
    assert not loaded(fresh_imports, "prefect"), fresh_imports["first_imported_by"]


@pytest.mark.parametrize(
    "remove, named",
    [
        ("model_index.json", "model_index.json"),
        ("unet", "unet/"),
        ("vae", "vae/"),
        ("text_encoder", "text_encoder/"),
        ("tokenizer", "tokenizer/"),
        ("scheduler", "scheduler/"),
        ("vae/config.json", "vae/ (config.json)"),
        ("unet/diffusion_pytorch_model.safetensors", "unet/ (weights"),
        ("scheduler/scheduler_config.json", "scheduler/ (scheduler_config.json)"),
    ],
)
def test_layout_error_names_the_missing_part(sd_dir, tmp_path, remove, named) -> None:
    broken = shutil.copytree(sd_dir, tmp_path / "sd")
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelLayoutError) as err:
        StableDiffusion.from_base(broken, LABELS)
    msg = str(err.value)
    assert str(broken) in msg and "not a diffusers Stable Diffusion directory" in msg
    assert named in msg
    assert isinstance(err.value, ValueError)


def test_layout_error_names_every_missing_part_and_files_instead_of_dirs(sd_dir, tmp_path) -> None:
    broken = shutil.copytree(sd_dir, tmp_path / "sd")
    (broken / "vae" / "config.json").unlink()
    shutil.rmtree(broken / "tokenizer")
    shutil.rmtree(broken / "unet")
    (broken / "unet").write_text("not a folder")
    with pytest.raises(ModelLayoutError) as err:
        StableDiffusion.from_base(broken, LABELS)
    msg = str(err.value)
    assert "vae/ (config.json)" in msg and "tokenizer/" in msg and "unet/ (a file, not a directory)" in msg
    assert "text_encoder" not in msg and "scheduler" not in msg

    a_file = tmp_path / "sd.txt"
    a_file.write_text("x")
    with pytest.raises(ModelLayoutError, match="is a file"):
        StableDiffusion.from_base(a_file, LABELS)
    with pytest.raises(ModelLayoutError, match="does not exist"):
        StableDiffusion.from_base(tmp_path / "nowhere", LABELS)


def test_inspect_reads_the_configs_without_loading(sd_dir, model, tmp_path) -> None:
    info = inspect_base(sd_dir)
    assert info.family == "sd" and info.feature_blocks == len(model.unet.up_blocks) == 2
    assert info.block_name == "decoder block" and info.prediction == "epsilon" and info.conditioning == "prompt"
    assert info.native_resolution == 32 and not info.fixed_resolution  # sample_size 8 x latent factor 4
    assert info.parameters == sum(p.numel() for p in model.unet.parameters())  # from the safetensors header
    broken = shutil.copytree(sd_dir, tmp_path / "sd")
    config = broken / "unet" / "config.json"
    values = json.loads(config.read_text())
    for bad, words in (
        ("{not json", "JSONDecodeError"),
        (json.dumps({**values, "up_block_types": []}), "up_block_types must be a non-empty list"),
        (json.dumps({k: v for k, v in values.items() if k != "up_block_types"}), "up_block_types .KeyError"),
        ("[1, 2]", "expected a JSON object"),
    ):
        config.write_text(bad)
        with pytest.raises(ModelLayoutError, match=words) as err:
            inspect_base(broken)
        assert str(config) in str(err.value)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLayoutError, match="missing unet/"):
        inspect_base(broken)


def test_incompatible_parts_are_refused_with_their_values(model) -> None:
    from diffusers import UNet2DConditionModel

    def unet(**kw):
        cfg = dict(model.unet.config)
        cfg.update(kw)
        return UNet2DConditionModel.from_config(cfg)

    parts = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, scheduler=model.scheduler)
    with pytest.raises(ValueError, match=r"in_channels 3 != vae latent_channels 4"):
        StableDiffusion(unet(in_channels=3, out_channels=3), labels=LABELS, **parts)
    with pytest.raises(ValueError, match=r"out_channels 8 != in_channels 4"):
        StableDiffusion(unet(out_channels=8), labels=LABELS, **parts)
    with pytest.raises(ValueError, match=r"cross_attention_dim 32 != text encoder hidden_size 16"):
        StableDiffusion(unet(cross_attention_dim=32), labels=LABELS, **parts)


def test_sample_prediction_checkpoint_is_refused(sd_dir, tmp_path) -> None:
    other = shutil.copytree(sd_dir, tmp_path / "sd")
    cfg_path = other / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "sample"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="prediction_type 'sample' is neither 'epsilon' nor 'v_prediction'"):
        StableDiffusion.from_base(other, LABELS)


# ---------------------------------------------------------------------- prompts and labels
@pytest.mark.parametrize(
    "label, text",
    [
        ("new_york__city", "new york city"),
        ("old--cars", "old cars"),
        ("old_-_cars", "old cars"),
        ("X-ray", "X-ray"),
        ("1950s", "1950s"),
        ("São Paulo", "São Paulo"),
        ("Sa\u0303o Paulo", "São Paulo"),  # decomposed -> NFC
        ("Côte d'Ivoire", "Côte d'Ivoire"),
        ("東京 タワー", "東京 タワー"),
        ("  a\tb\n\n c  ", "a b c"),
        ("a\x00b\u200bc\x7f", "abc"),
        ("_leading_and_trailing_", "leading and trailing"),
        ("R&D: 50% (approx.)", "R&D: 50% (approx.)"),
    ],
)
def test_render_prompt(label, text) -> None:
    assert render_prompt("An image of {label}.", label) == f"An image of {text}."


def test_render_prompt_keeps_braces_in_labels_and_literal_braces_in_templates() -> None:
    assert render_prompt("{{x}} {label}", "a{b}") == "{x} a{b}"


@pytest.mark.parametrize("label", ["___", "\x00\x01", " -- "])
def test_render_prompt_refuses_labels_with_nothing_readable(label) -> None:
    with pytest.raises(ValueError) as err:
        render_prompt("{label}", label)
    assert repr(label) in str(err.value)


@pytest.mark.parametrize(
    "template",
    ["An image.", "{label} and {label}", "{label} of {place}", "{}", "{label!r}", "{label:>9}", "{label", "{0}"],
)
def test_bad_templates_are_refused_and_echoed(sd_dir, template) -> None:
    with pytest.raises(ValueError) as err:
        validate_prompt_template(template)
    assert repr(template) in str(err.value)
    with pytest.raises(ValueError):
        StableDiffusion.from_base(sd_dir, LABELS, prompt_template=template)


def test_prompts_labels_and_clashes(model, sd_dir) -> None:
    assert model.prompts == ("", "An image of old cars.", "An image of São Paulo.", "An image of 1950s.")
    assert model.label_index([None, "1950s", "old_cars"]).tolist() == [0, 3, 1]
    assert model.label_index([None]).dtype == torch.long
    with pytest.raises(ValueError, match="'bus'"):
        model.label_index(["bus"])
    with pytest.raises(ValueError, match=r"both render to 'An image of old cars.'"):
        StableDiffusion.from_base(sd_dir, ["old_cars", "old cars"])
    with pytest.raises(ValueError, match="null prompt"):
        StableDiffusion.from_base(sd_dir, ["car"], prompt_template="A {label}.", null_prompt="A car.")
    with pytest.raises(ValueError, match="distinct"):
        StableDiffusion.from_base(sd_dir, ["a", "a"])


# ---------------------------------------------------------------------- text, encode, predict
def test_text_embeddings_are_computed_once(sd_dir) -> None:
    m = _fresh(sd_dir)
    calls = []
    m.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    x, t = _noisy()
    with torch.inference_mode():
        for _ in range(3):
            m.predict_noise(x, t, torch.tensor([0, 1, 2]))
    emb = m.text_embeddings()  # outside inference mode: the cached tensor is still usable
    assert len(calls) == 1 and m.text_encoder_calls == 1
    assert emb.shape == (len(LABELS) + 1, m.tokenizer.model_max_length, 16)
    ids = m.tokenizer(
        ["An image of São Paulo."], padding="max_length", truncation=True, max_length=16, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        assert torch.allclose(emb[2], m.text_encoder(ids)[0][0])
    emb.sum()  # no graph, no error
    m.half_precision(torch.bfloat16)  # the UNet's dtype changed: recomputed in that dtype
    assert m.text_embeddings().dtype == torch.bfloat16 and m.text_encoder_calls == 2
    assert len(calls) == 3  # cache, the check above, recomputation
    assert m.alphas_cumprod.dtype == torch.float32


def test_encode_is_the_scaled_posterior_mean(model) -> None:
    images = _images()
    z = model.encode(images)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    assert model.latent_factor == 4 and model.latent_channels == 4
    assert model.model_shape(*images.shape[-2:]) == tuple(z.shape[1:])
    assert torch.equal(z, model.encode(images))  # the mean, not a sample: deterministic
    with torch.no_grad():
        dist = model.vae.encode(images.float() / 127.5 - 1.0).latent_dist
    assert torch.allclose(z, dist.mean * model.vae.config.scaling_factor, atol=1e-6)
    assert not torch.allclose(z, dist.sample(torch.Generator().manual_seed(0)) * model.vae.config.scaling_factor)
    with pytest.raises(ValueError, match=r"30x32 .* factor 4"):
        model.encode(_images(size=32)[..., :30, :])
    with pytest.raises(TypeError, match="uint8"):
        model.encode(images.float())


def test_latent_encoder_alone_matches_the_model(sd_dir, model, tmp_path) -> None:
    enc = LatentEncoder.from_base(sd_dir)
    assert enc.latent_factor == 4 and enc.latent_channels == 4 and not enc.train().vae.training
    assert torch.equal(enc.encode(_images()), model.encode(_images()))
    only_vae = tmp_path / "only_vae"
    shutil.copytree(sd_dir / "vae", only_vae / "vae")
    assert LatentEncoder.from_base(only_vae).encode(_images()).shape == (2, 4, 8, 8)  # needs vae/ only
    shutil.rmtree(only_vae / "vae")
    with pytest.raises(ModelLayoutError, match=r"missing vae/$"):
        LatentEncoder.from_base(only_vae)


def test_decode_maps_latents_back_to_uint8_images(model) -> None:
    z = model.encode(_images())
    images = model.decode(z)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, model.decode(z))
    with torch.no_grad():
        by_hand = model.vae.decode(z / model.vae.config.scaling_factor).sample.clamp(-1, 1)
    assert ((images.float() / 127.5 - 1.0) - by_hand).abs().max() <= 1.0 / 127.5
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        model.decode(z[:, :3])


def test_predict_noise_shapes_and_conditioning(model) -> None:
    x, t = _noisy(4)
    with torch.inference_mode():
        out = model.predict_noise(x, t, torch.tensor([0, 1, 1, 3]))
        again = model.predict_noise(x, t, torch.tensor([1, 1, 1, 3]))
    assert out.shape == (4, 4, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], again[0])  # null prompt vs label prompt
    assert torch.allclose(out[1:], again[1:], atol=1e-6)
    assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_module_modes_and_dtypes(sd_dir) -> None:
    m = _fresh(sd_dir)
    m.train()
    assert m.unet.training and not m.vae.training and not m.text_encoder.training
    assert not any(p.requires_grad for p in [*m.vae.parameters(), *m.text_encoder.parameters()])
    m.to(torch.float64)
    assert m.alphas_cumprod.dtype == torch.float32 and m.dtype == torch.float64
    with pytest.raises(ValueError, match="int8"):
        m.half_precision(torch.int8)


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip(model, tmp_path) -> None:
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "gcmine_model.json").read_text())
    assert meta == {"kind": "sd", "labels": list(LABELS), "prompt_template": "An image of {label}.", "null_prompt": ""}
    loaded = StableDiffusion.load(tmp_path / "m").eval()
    assert loaded.labels == model.labels and loaded.prompts == model.prompts
    assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)
    x, t = _noisy()
    cond = torch.tensor([0, 2, 3])
    with torch.inference_mode():
        assert torch.equal(loaded.predict_noise(x, t, cond), model.predict_noise(x, t, cond))
    assert torch.equal(loaded.encode(_images()), model.encode(_images()))
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]  # the sampler class is kept for pipelines
    assert isinstance(load_any_model(tmp_path / "m"), StableDiffusion)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m", safety_checker=None)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_half_precision_unet_on_load(sd_dir, model) -> None:
    half = StableDiffusion.from_base(sd_dir, LABELS, dtype=torch.bfloat16).eval()
    assert half.dtype == torch.bfloat16 and half.alphas_cumprod.dtype == torch.float32
    assert next(half.vae.parameters()).dtype == torch.float32  # VAE and text encoder stay fp32
    assert half.encode(_images()).dtype == torch.float32
    x, t = _noisy()
    cond = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        out = half.predict_noise(x, t, cond)
        ref = model.predict_noise(x, t, cond)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.1) and not torch.equal(out.float(), ref)


def test_load_any_model_dispatch(tmp_path) -> None:
    pixel = PixelDiffusion.create(
        ["a", "b"],
        resolution=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        num_train_timesteps=10,
        beta_schedule="linear",
        generator=torch.Generator().manual_seed(0),
    )
    pixel.save(tmp_path / "p")
    assert isinstance(load_any_model(tmp_path / "p"), PixelDiffusion)
    meta_path = tmp_path / "p" / "gcmine_model.json"
    meta = json.loads(meta_path.read_text())
    del meta["kind"]
    meta_path.write_text(json.dumps(meta))
    assert isinstance(load_any_model(tmp_path / "p"), PixelDiffusion)
    meta_path.write_text(json.dumps({**meta, "kind": "gan"}))
    with pytest.raises(ValueError, match="'gan'"):
        load_any_model(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match=r"gcmine_model.json"):
        load_any_model(tmp_path)


# ---------------------------------------------------------------------- training knobs
def _step(m: StableDiffusion, params, seed: int = 0) -> float:
    opt = torch.optim.AdamW(params, lr=1e-2)
    z = m.encode(_images(4, seed=seed))
    loss = m.training_loss(z, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(seed)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_lora_trains_only_the_adapter_and_saves_merged(sd_dir, tmp_path) -> None:
    m = _fresh(sd_dir)
    x, t = _noisy()
    cond = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        before = m.predict_noise(x, t, cond)
    n_full = len(m.trainable_parameters())
    m.enable_lora(2, alpha=4)
    assert m.lora == {"rank": 2, "alpha": 4.0}
    names = [n for n, p in m.unet.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names) and len(names) < n_full
    assert len(m.trainable_parameters()) == len(names)
    assert {n.split(".")[-4] for n in names} == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    with torch.inference_mode():
        assert torch.equal(m.predict_noise(x, t, cond), before)  # B = 0 at the start
    frozen = {n: p.clone() for n, p in m.unet.named_parameters() if not p.requires_grad}
    m.train()
    _step(m, m.trainable_parameters())
    m.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in m.unet.named_parameters() if not p.requires_grad)
    with torch.inference_mode():
        after = m.predict_noise(x, t, cond)
    assert not torch.allclose(after, before)
    with pytest.raises(ValueError, match="already enabled"):
        m.enable_lora(2)
    with pytest.raises(ValueError, match="rank"):
        _fresh(sd_dir).enable_lora(0)

    m.save(tmp_path / "lora")
    loaded = StableDiffusion.load(tmp_path / "lora").eval()
    assert loaded.lora is None and not any("lora" in k for k in loaded.unet.state_dict())
    with torch.inference_mode():
        assert torch.allclose(loaded.predict_noise(x, t, cond), after, atol=1e-5)
    assert m.lora is not None  # the in-memory model keeps its adapter


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(sd_dir) -> None:
    def loss_and_grads(m):
        m.train()
        z = m.encode(_images(2))
        loss = m.training_loss(z, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(3)).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.trainable_parameters()]

    plain, plain_g = loss_and_grads(_fresh(sd_dir))
    ckpt_model = _fresh(sd_dir).enable_gradient_checkpointing()
    assert ckpt_model.unet.is_gradient_checkpointing
    ckpt, ckpt_g = loss_and_grads(ckpt_model)
    assert torch.allclose(plain, ckpt, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain_g, ckpt_g))


def test_two_step_full_finetuning_stays_finite_and_moves(sd_dir) -> None:
    m = _fresh(sd_dir).train()
    params = m.trainable_parameters()
    assert len(params) == len(list(m.unet.parameters()))
    start = [p.detach().clone() for p in params]
    losses = [_step(m, params, seed=s) for s in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, start))


def test_the_trainer_runs_on_it(sd_dir) -> None:
    from gcmodels.diffusion.training import train_diffusion

    m = _fresh(sd_dir)
    result = train_diffusion(
        m,
        _images(4),
        torch.tensor([1, 2, 3, 1]),
        steps=2,
        batch_size=2,
        lr=1e-4,
        warmup_steps=1,
        weight_decay=1e-2,
        grad_clip=1.0,
        label_dropout=0.1,
        checkpoint_every=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert not m.unet.training and not m.vae.training


# ---------------------------------------------------------------------- features and typicality
def test_decoder_features(model) -> None:
    z = model.encode(_images(2))
    cond = torch.tensor([1, 2])
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # D shares a factor with B
    with torch.inference_mode():
        f1 = model.decoder_features(z, cond, 161, noise, 1)
        f0 = model.decoder_features(z, cond, 161, noise, -2)
        f_small = model.decoder_features(z, cond, 161, noise, 1, max_batch=3)
        per_draw = torch.stack([model.decoder_features(z, cond, 161, noise[d : d + 1], 1) for d in range(4)]).mean(0)
        f_img1 = model.decoder_features(z[1:], cond[1:], 161, noise, 1)
    assert f1.shape == (2, 8, 8, 8) and f0.shape == (2, 16, 8, 8) and f1.dtype == torch.float32
    assert torch.allclose(f1, f_small, atol=1e-5) and torch.allclose(f1, per_draw, atol=1e-5)
    assert torch.allclose(f1[1:], f_img1, atol=1e-5)  # image b is paired with every draw, not mixed
    for bad in (2, -3):
        with pytest.raises(ValueError, match=f"block {bad} out of range: the UNet has 2 decoder blocks"):
            model.decoder_features(z, cond, 161, noise, bad)
    with pytest.raises(ValueError, match="noise"):
        model.decoder_features(z, cond, 161, noise[:, :3], 1)


def test_typicality_maps_at_latent_resolution(model) -> None:
    z = model.encode(_images(3))
    cond = torch.tensor([1, 2, 3])
    maps = TypicalityEstimator(draws=2, batch_size=8).maps(model, z, cond)
    assert maps.shape == (3, 8, 8) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    again = TypicalityEstimator(draws=2, batch_size=8).maps(model, z, cond)
    assert torch.allclose(maps, again, atol=1e-6)


@pytest.mark.parametrize("lora", [0, 2])
def test_sd_fine_tuning_interrupted_and_resumed_equals_uninterrupted(sd_dir, tmp_path, lora: int) -> None:
    """Fine-tuning the SD UNet (full or LoRA) on latents of two aspect ratios, stopped at the step-2
    checkpoint and resumed in a fresh model from the saved state, ends with the weights and loss
    history of the uninterrupted run; then save -> load gives the same predictions."""
    from gcmodels.diffusion.training import train_diffusion

    class Stop(Exception):
        pass

    g = torch.Generator().manual_seed(5)
    buckets = [torch.randn(4, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 12, generator=g)]
    conds = [torch.tensor([1, 2, 0, 3]), torch.tensor([2, 1])]

    def fresh() -> StableDiffusion:
        m = _fresh(sd_dir)
        return m.enable_lora(lora, generator=torch.Generator().manual_seed(0)) if lora else m

    def run(model, seed, **kw):
        return train_diffusion(
            model,
            buckets,
            conds,
            steps=4,
            batch_size=2,
            lr=1e-3,
            warmup_steps=0,
            weight_decay=1e-2,
            grad_clip=1.0,
            label_dropout=0.1,
            checkpoint_every=2,
            generator=torch.Generator().manual_seed(seed),
            lr_schedule="constant",
            ema_decay=0.9,
            **kw,
        )

    full = fresh()
    ref = run(full, 7)

    def stop_at_2(state: dict) -> None:
        torch.save(state, tmp_path / "ckpt.pt")
        raise Stop

    with pytest.raises(Stop):
        run(fresh(), 7, on_checkpoint=stop_at_2)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = fresh()
    out = run(resumed, 123, resume=state)
    assert out.resumed_from == 2 and [r["loss"] for r in out.history] == [r["loss"] for r in ref.history]
    a, b = dict(full.unet.named_parameters()), dict(resumed.unet.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(state["weights"]) == len(resumed.trainable_parameters())  # only what is trained is checkpointed
    resumed.save(tmp_path / "tuned")
    loaded = StableDiffusion.load(tmp_path / "tuned").eval()
    x, t = _noisy(2)
    cond = torch.tensor([1, 0])
    with torch.no_grad():
        assert torch.allclose(loaded.predict_noise(x, t, cond), resumed.eval().predict_noise(x, t, cond), atol=1e-5)


def test_half_precision_scoring_keeps_the_loss_math_in_fp32(sd_dir) -> None:
    """Scoring with the UNet in bf16 (what runtime.precision gives on a GPU; CPU bf16 stands in):
    maps come back float32 and close to the fp32 ones; DIFT features too."""
    full = _fresh(sd_dir)
    half = _fresh(sd_dir).half_precision(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.alphas_cumprod.dtype == torch.float32
    z = full.encode(_images())
    cond = torch.tensor([1, 2])
    est = TypicalityEstimator(draws=4, batch_size=8)
    a, b = est.maps(full, z, cond), est.maps(half, z, cond)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9
    noise = torch.randn((2, *z.shape[1:]), generator=torch.Generator().manual_seed(0))
    fa = full.decoder_features(z, cond, 161, noise, 1)
    fb = half.decoder_features(z, cond, 161, noise, 1).float()
    assert fa.shape == fb.shape and torch.corrcoef(torch.stack([fa.flatten(), fb.flatten()]))[0, 1] > 0.95


# ---------------------------------------------------------------------- SD 2.x v-prediction and the loading defects
@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory) -> Path:
    """SD 2.x 768-v as hub checkpoints often ship it: v_prediction, weights only as *.fp16.safetensors in fp16."""
    return build_tiny_sd(
        tmp_path_factory.mktemp("tiny-sd2") / "sd2", seed=1, prediction_type="v_prediction", fp16_variant=True
    )


def _dtypes(folder: Path) -> set[str]:
    import struct

    found = set()
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            found |= {v["dtype"] for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"}
    return found


def test_fp16_variant_only_weights_load_in_fp32_and_save_back_in_fp32(sd2_dir, tmp_path) -> None:
    """A directory whose weights are only *.fp16.safetensors (fp16) passed the layout check and then
    crashed with an OSError; now its variant is loaded, every part in fp32 (transformers 5 kept the
    text encoder in fp16, and `save` wrote it back so), and saved back in fp32."""
    assert not list((sd2_dir / "unet").glob("diffusion_pytorch_model.safetensors"))
    assert _dtypes(sd2_dir / "text_encoder") == {"F16"}
    info = inspect_base(sd2_dir)
    assert info.prediction == "v_prediction" and info.parameters and info.parameters > 0
    m = StableDiffusion.from_base(sd2_dir, LABELS)
    assert m.dtype == torch.float32
    assert {next(p.parameters()).dtype for p in (m.vae, m.text_encoder)} == {torch.float32}
    m.save(tmp_path / "saved")
    for part in ("unet", "vae", "text_encoder"):
        assert _dtypes(tmp_path / "saved" / part) == {"F32"}, part


def test_prompt_states_are_computed_outside_autocast(sd_dir) -> None:
    """The first conditioning call of a fine-tuning runs inside autocast; the cached states must be
    the fp32 ones scoring computes (they were bf16-computed and 0.5 % off on the tiny model)."""
    m = _fresh(sd_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = m.text_embeddings().clone()
        with torch.no_grad():
            te = m.text_encoder(
                m.tokenizer(
                    list(m.prompts), padding="max_length", truncation=True, max_length=16, return_tensors="pt"
                ).input_ids
            )[0]
    outside = _fresh(sd_dir).text_embeddings()
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)
    assert not torch.allclose(te.float(), outside, rtol=0, atol=1e-4)  # autocast would have changed them


def test_v_prediction_trains_on_v_and_scores_in_eps_space(sd2_dir, tmp_path) -> None:
    """SD 2.x 768-v: the loss is the MSE to the scheduler's own target v (diffusers' get_velocity),
    the prediction reaches the estimator converted to eps, and the saved directory loads in
    StableDiffusionPipeline with its v_prediction scheduler."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    m = StableDiffusion.from_base(sd2_dir, LABELS).eval()
    assert m.prediction == "v_prediction"
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([1, 0])
    loss = m.training_loss(z, cond, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    sched = DDPMScheduler.from_pretrained(sd2_dir / "scheduler")
    with torch.no_grad():
        v_hat = m.unet(sched.add_noise(z, eps, t), t, encoder_hidden_states=m.text_embeddings()[cond]).sample
        manual = (v_hat - sched.get_velocity(z, eps, t)).pow(2).flatten(1).mean(1)
        assert torch.allclose(loss, manual, atol=1e-5)
        x_t = m.add_noise(z, eps, t)
        abar = m.alphas_cumprod[t].view(-1, 1, 1, 1)
        assert torch.allclose(m.predict_noise(x_t, t, cond), abar.sqrt() * v_hat + (1 - abar).sqrt() * x_t, atol=1e-5)
    m.save(tmp_path / "v")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "v", safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert StableDiffusion.load(tmp_path / "v").prediction == "v_prediction"
