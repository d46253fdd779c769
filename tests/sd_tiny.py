"""A tiny random Stable Diffusion v1.x directory, written on the fly (no downloads).

`build_tiny_sd(path)` writes the diffusers layout a real SD v1.x checkpoint has
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)
with a few-thousand-parameter UNet, VAE and CLIP text encoder, and a CLIP tokenizer whose byte-level
BPE vocabulary (the 256 byte tokens, their ``</w>`` variants, a few merges, the two special tokens)
is written here too. Shapes follow SD: 4 latent channels, cross-attention over the text encoder's
hidden states, scaled-linear betas 0.00085-0.012 over 1000 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["TINY_MAX_LENGTH", "build_tiny_sd", "byte_level_vocabulary"]

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


def build_tiny_sd(
    path: str | Path,
    *,
    seed: int = 0,
    sample_size: int = 8,
    vae_levels: int = 3,
    scheduler: str = "PNDMScheduler",
) -> Path:
    """Write a tiny random SD v1.x diffusers directory at `path` and return it.

    The VAE has `vae_levels` levels, so the latent factor is 2 ** (vae_levels - 1) (4 by default:
    32 x 32 images -> 4 x 8 x 8 latents, the UNet's `sample_size`). The scheduler config is saved
    under the class `scheduler` (DDPMScheduler or PNDMScheduler, as SD v1.5 ships). Seeded: the same
    `seed` gives the same weights. Leaves the global RNG state untouched.
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * vae_levels,
            up_block_types=("UpDecoderBlock2D",) * vae_levels,
            block_out_channels=(8,) * (vae_levels - 1) + (16,),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=sample_size * 2 ** (vae_levels - 1),
        )
        vocab = byte_level_vocabulary()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=TINY_MAX_LENGTH,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
        )
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text_encoder.save_pretrained(path / "text_encoder")

    tok_dir = path / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=TINY_MAX_LENGTH
    ).save_pretrained(tok_dir)

    sched_cls = getattr(diffusers, scheduler)
    sched_kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if scheduler == "PNDMScheduler":
        sched_kw.update(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    sched_cls(**sched_kw).save_pretrained(path / "scheduler")

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
