"""Tiny random checkpoint directories of every family gcmine mines with, written on the fly (no downloads).

Each builder writes the diffusers layout the real checkpoints have, with the family's real
diffusers / transformers classes at a few thousand parameters, and tokenizers written here:

- `build_tiny_sd`: Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``: ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), eps or v prediction, optionally with weights
  exported only as the fp16 variant (``*.fp16.safetensors``, in fp16) as many hub checkpoints are;
- `build_tiny_sdxl`: SDXL (``StableDiffusionXLPipeline``: a text-time UNet, ``text_encoder`` +
  ``text_encoder_2`` with projection, two tokenizers, ``force_zeros_for_empty_prompt``);
- `build_tiny_sd3`: SD3 / SD3.5 (``StableDiffusion3Pipeline``: ``SD3Transformer2DModel``, a
  16-channel VAE with a shift factor, two CLIP encoders with projection, optionally a T5 encoder,
  ``FlowMatchEulerDiscreteScheduler``);
- `build_tiny_dit`: DiT (``DiTPipeline``: ``DiTTransformer2DModel`` with learned-variance output
  channels, class ids and ``id2label``);
- `build_flux_like`: the index and transformer config of a guidance-distilled Flux model (to be refused).

The CLIP tokenizer is byte-level BPE: the 256 byte tokens, their ``</w>`` variants, a few merges and
the two special tokens. The T5 tokenizer is a unigram vocabulary of letters and a few words
(transformers 5's `T5Tokenizer(vocab=[(piece, score), ...])` builds it offline, no sentencepiece).
Shapes follow the real models at small widths; the latent factor is 4 (3 VAE levels): 32 x 32 images
-> 8 x 8 latents. Seeded: the same `seed` gives the same weights; the global RNG state is untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = [
    "TINY_MAX_LENGTH",
    "build_flux_like",
    "build_tiny_dit",
    "build_tiny_sd",
    "build_tiny_sd3",
    "build_tiny_sdxl",
    "byte_level_vocabulary",
]

TINY_MAX_LENGTH = 16  # tokenizer.model_max_length = text encoder positions
_MERGES = ("t h", "th e</w>", "a n", "i n", "o f</w>", "c a", "ca r</w>", "e r", "i m", "im a", "ima g", "imag e")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_vocabulary(merges: tuple[str, ...] = _MERGES) -> dict[str, int]:
    """The tiny CLIP vocabulary: byte tokens, their ``</w>`` variants, merged tokens, special tokens."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab


def _write_clip_tokenizer(tok_dir: Path) -> dict[str, int]:
    from transformers import CLIPTokenizer

    vocab = byte_level_vocabulary()
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=TINY_MAX_LENGTH
    ).save_pretrained(tok_dir)
    return vocab


def _tiny_clip(vocab: dict[str, int], *, hidden: int = 16, projection: int | None = None):
    """A tiny CLIP text encoder (with a projection head when `projection`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TINY_MAX_LENGTH,
        projection_dim=projection or hidden,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _tiny_vae(sample_size: int, *, levels: int = 3, latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * (levels - 1) + (16,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size * 2 ** (levels - 1),
        **kw,
    )


def _write_index(path: Path, index: dict) -> None:
    import diffusers

    (path / "model_index.json").write_text(json.dumps({**index, "_diffusers_version": diffusers.__version__}, indent=2))


def _save(module, folder: Path, fp16_variant: bool) -> None:
    """save_pretrained, or as many hub checkpoints ship: only ``*.fp16.safetensors`` weights, in fp16."""
    if fp16_variant:
        module.to(torch.float16).save_pretrained(folder, variant="fp16")
    else:
        module.save_pretrained(folder)


def build_tiny_sd(
    path: str | Path,
    *,
    seed: int = 0,
    sample_size: int = 8,
    vae_levels: int = 3,
    scheduler: str = "PNDMScheduler",
    prediction_type: str = "epsilon",
    fp16_variant: bool = False,
) -> Path:
    """Write a tiny random SD 1.x / 2.x diffusers directory at `path` and return it.

    The VAE has `vae_levels` levels, so the latent factor is 2 ** (vae_levels - 1) (4 by default:
    32 x 32 images -> 4 x 8 x 8 latents, the UNet's `sample_size`). The scheduler config is saved
    under the class `scheduler` (DDPMScheduler or PNDMScheduler, as SD v1.5 ships) with
    `prediction_type` (v_prediction: as SD 2.x 768-v ships, with a linear-projection UNet). With
    `fp16_variant` every model's weights are written only as ``*.fp16.safetensors`` in fp16.
    """
    import diffusers
    from diffusers import UNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
            norm_num_groups=4,
            **({"use_linear_projection": True} if prediction_type == "v_prediction" else {}),
        )
        vae = _tiny_vae(sample_size, levels=vae_levels)
        vocab = byte_level_vocabulary()
        text_encoder = _tiny_clip(vocab)
    _save(unet, path / "unet", fp16_variant)
    _save(vae, path / "vae", fp16_variant)
    _save(text_encoder, path / "text_encoder", fp16_variant)
    _write_clip_tokenizer(path / "tokenizer")

    sched_cls = getattr(diffusers, scheduler)
    sched_kw = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    )
    if scheduler == "PNDMScheduler":
        sched_kw.update(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    sched_cls(**sched_kw).save_pretrained(path / "scheduler")
    _write_index(
        path,
        {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return path


def build_tiny_sdxl(path: str | Path, *, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny random SDXL directory: a UNet with the text-time additional embedding
    (pooled text embeds of text_encoder_2 + 6 size ids), cross-attention over the two encoders'
    concatenated penultimate states (16 + 16), the VAE, two tokenizers, an EulerDiscreteScheduler
    (scaled-linear betas, eps) and ``force_zeros_for_empty_prompt``."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=4,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=16 + 6 * 4,
        )
        vae = _tiny_vae(sample_size, scaling_factor=0.13025)
        vocab = byte_level_vocabulary()
        text_encoder = _tiny_clip(vocab)
        text_encoder_2 = _tiny_clip(vocab, projection=16)
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text_encoder.save_pretrained(path / "text_encoder")
    text_encoder_2.save_pretrained(path / "text_encoder_2")
    _write_clip_tokenizer(path / "tokenizer")
    _write_clip_tokenizer(path / "tokenizer_2")
    EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    ).save_pretrained(path / "scheduler")
    _write_index(
        path,
        {
            "_class_name": "StableDiffusionXLPipeline",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return path


_T5_WORDS = ("▁a", "▁an", "▁image", "▁of", "▁photo", "▁car", "▁red", "▁blue", "▁the")


def _write_t5_tokenizer(tok_dir: Path) -> None:
    """A unigram T5 tokenizer: pad, eos, unk, single letters and digits (each with and without the
    word-start mark), a few words, built offline by transformers 5 from (piece, score) pairs."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'-"
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars] + [(w, -1.0) for w in _T5_WORDS]
    T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TINY_MAX_LENGTH).save_pretrained(tok_dir)


def build_tiny_sd3(path: str | Path, *, seed: int = 0, sample_size: int = 8, t5: bool = True) -> Path:
    """Write a tiny random SD3 / SD3.5 directory: ``SD3Transformer2DModel`` (patch 2, joint attention
    width 32 = the T5 width = the two CLIP widths concatenated, pooled 16 + 16), a 16-channel VAE with
    scaling and shift factors, two CLIP encoders with projection, a T5 encoder (or none: text_encoder_3
    and tokenizer_3 null, as the SD3 pipeline allows), FlowMatchEulerDiscreteScheduler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=32,
            out_channels=16,
            pos_embed_max_size=16,
        )
        vae = _tiny_vae(
            sample_size,
            latent_channels=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        vocab = byte_level_vocabulary()
        text_encoder = _tiny_clip(vocab, projection=16)
        text_encoder_2 = _tiny_clip(vocab, projection=16)
        t5_model = (
            T5EncoderModel(
                T5Config(
                    vocab_size=160,
                    d_model=32,
                    d_kv=8,
                    d_ff=64,
                    num_layers=1,
                    num_heads=2,
                    relative_attention_num_buckets=8,
                    pad_token_id=0,
                    eos_token_id=1,
                    decoder_start_token_id=0,
                )
            )
            if t5
            else None
        )
    transformer.save_pretrained(path / "transformer")
    vae.save_pretrained(path / "vae")
    text_encoder.save_pretrained(path / "text_encoder")
    text_encoder_2.save_pretrained(path / "text_encoder_2")
    _write_clip_tokenizer(path / "tokenizer")
    _write_clip_tokenizer(path / "tokenizer_2")
    if t5_model is not None:
        t5_model.save_pretrained(path / "text_encoder_3")
        _write_t5_tokenizer(path / "tokenizer_3")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(path / "scheduler")
    _write_index(
        path,
        {
            "_class_name": "StableDiffusion3Pipeline",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_3": ["transformers", "T5EncoderModel"] if t5 else [None, None],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "tokenizer_3": ["transformers", "T5Tokenizer"] if t5 else [None, None],
            "transformer": ["diffusers", "SD3Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return path


def build_tiny_dit(path: str | Path, *, seed: int = 0, sample_size: int = 8, num_classes: int = 10) -> Path:
    """Write a tiny random DiT directory: ``DiTTransformer2DModel`` (patch 2, adaLN-zero, `num_classes`
    classes + the null class, 8 output channels = eps + learned variance), the VAE, a DDIMScheduler
    with DiT's linear betas, and ``id2label`` naming the classes in model_index.json."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=sample_size,
            patch_size=2,
            num_embeds_ada_norm=num_classes,
            norm_type="ada_norm_zero",
        )
        vae = _tiny_vae(sample_size)
    transformer.save_pretrained(path / "transformer")
    vae.save_pretrained(path / "vae")
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False
    ).save_pretrained(path / "scheduler")
    names = [
        "tench",
        "goldfish",
        "white shark",
        "tiger shark",
        "hammerhead",
        "electric ray",
        "stingray",
        "cock",
        "hen",
        "ostrich",
    ]
    _write_index(
        path,
        {
            "_class_name": "DiTPipeline",
            "id2label": {str(i): (names[i] if i < len(names) else f"class {i}") for i in range(num_classes)},
            "scheduler": ["diffusers", "DDIMScheduler"],
            "transformer": ["diffusers", "DiTTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return path


def build_flux_like(path: str | Path, *, pipeline: str = "FluxPipeline", guidance_embeds: bool = True) -> Path:
    """model_index.json and transformer/config.json of a Flux checkpoint (no weights: gcmine must
    refuse it from its configs alone)."""
    path = Path(path)
    (path / "transformer").mkdir(parents=True, exist_ok=True)
    (path / "transformer" / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "FluxTransformer2DModel",
                "guidance_embeds": guidance_embeds,
                "in_channels": 64,
                "num_layers": 19,
            }
        )
    )
    _write_index(
        path,
        {
            "_class_name": pipeline,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return path
