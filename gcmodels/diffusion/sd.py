"""Stable Diffusion 1.x / 2.x: a UNet over VAE latents with cross-attention to CLIP text states.

`StableDiffusion` wraps the UNet, VAE, CLIP text encoder, tokenizer and noise schedule of a local
diffusers SD 1.x or 2.x directory (``StableDiffusionPipeline`` layout):

- labels become prompts through ONE template (``"An image of {label}."``), index 0 the null
  prompt; the L + 1 prompts are encoded once by the frozen text encoder (its last hidden states,
  padded to the tokenizer's length) and cached;
- the DDPM schedule is the checkpoint's (scaled-linear betas 0.00085-0.012 over 1000 steps),
  whatever sampler class ``scheduler/`` names; the UNet predicts eps (SD 1.x, SD 2.x base) or v
  (``prediction_type: v_prediction``, SD 2.x 768-v): it trains on the scheduler's own target and
  its v is read in eps space for scoring (`gcmodels.diffusion.parametrisation`);
- features: DIFT activations (output of ``unet.up_blocks[block]``) at latent resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from gcmodels.diffusion.latent import (
    DEFAULT_NULL_PROMPT,
    DEFAULT_PROMPT_TEMPLATE,
    SCHEDULER,
    TOKENIZER,
    CheckpointInfo,
    LatentDiffusion,
    Part,
    check_layout,
    ddpm_schedule,
    label_prompts,
    load_diffusers,
    load_text_encoder,
    read_json,
    safetensors_parameters,
    unet_decoder_blocks,
    vae_factor,
)

__all__ = ["StableDiffusion"]


class StableDiffusion(LatentDiffusion):
    """A text-conditional latent DDPM (SD 1.x / 2.x, eps or v prediction) with a label vocabulary.

    Index 0 is the null prompt, index i + 1 the prompt of ``labels[i]``."""

    family = "sd"
    title = "Stable Diffusion 1.x/2.x"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_part = "unet"
    # the parts LatentDiffusion.__init__ sets by name (setattr), declared for the type checker
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    PARTS: ClassVar[dict[str, Part]] = {
        "unet": Part(),
        "vae": Part(),
        "text_encoder": Part(),
        "tokenizer": TOKENIZER,
        "scheduler": SCHEDULER,
    }

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
        scheduler_config: dict | None = None,
    ) -> None:
        prompts = label_prompts(labels, prompt_template, null_prompt)
        sched_cfg = dict(scheduler_config if scheduler_config is not None else scheduler.config)
        sched_cfg.setdefault("_class_name", type(scheduler).__name__)
        prediction = sched_cfg.get("prediction_type", "epsilon")
        _check_compatible(unet, vae, text_encoder, prediction)
        super().__init__(
            unet,
            vae,
            labels,
            alphas_cumprod=torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32),
            prediction=prediction,
            scheduler_config=sched_cfg,
            frozen={
                "text_encoder": text_encoder,
                "tokenizer": tokenizer,
                "safety_checker": None,
                "feature_extractor": None,
            },
        )
        self.prompt_template, self.null_prompt = prompt_template, null_prompt
        self._prompts = prompts
        self.scheduler = scheduler

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def detect(cls, index: dict, directory: Path) -> bool:
        """A UNet with one CLIP text encoder and no SDXL text-time embedding."""
        if index.get("unet") is None or index.get("text_encoder") is None or "text_encoder_2" in index:
            return False
        cfg = directory / "unet" / "config.json"
        return not (cfg.is_file() and read_json(cfg).get("addition_embed_type") == "text_time")

    @classmethod
    def inspect(cls, directory: Path, index: dict) -> CheckpointInfo:
        check_layout(directory, cls.PARTS, "Stable Diffusion")
        unet_cfg = read_json(directory / "unet" / "config.json")
        sched = read_json(directory / "scheduler" / "scheduler_config.json")
        factor = vae_factor(read_json(directory / "vae" / "config.json"))
        return CheckpointInfo(
            family=cls.family,
            title=cls.title,
            pipeline=str(index.get("_class_name")),
            directory=str(directory),
            prediction=sched.get("prediction_type", "epsilon"),
            feature_blocks=unet_decoder_blocks(directory / "unet" / "config.json"),
            block_name="decoder block",
            native_resolution=int(unet_cfg.get("sample_size", 64)) * factor,
            fixed_resolution=False,
            parameters=safetensors_parameters(directory / "unet"),
            conditioning="prompt",
            defaults={},  # the paper's settings (BASE_MODEL_DEFAULTS): 256 px, up_blocks[1]
        )

    @classmethod
    def from_base(
        cls,
        directory: str | Path,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
        dtype: torch.dtype | None = None,
        **_ignored,
    ) -> StableDiffusion:
        """Load a local diffusers SD 1.x/2.x directory for `labels` (CPU; the UNet in `dtype`, fp32 if None).

        Raises ModelLayoutError naming every missing part before loading anything, and ValueError
        if the parts do not fit together (channels, cross-attention width, prediction type)."""
        directory = Path(directory)
        check_layout(directory, cls.PARTS, "Stable Diffusion")
        label_prompts(labels, prompt_template, null_prompt)  # bad templates fail before loading weights
        sched_cfg = read_json(directory / "scheduler" / "scheduler_config.json")
        unet = load_diffusers(UNet2DConditionModel, directory / "unet", torch.float32 if dtype is None else dtype)
        vae = load_diffusers(AutoencoderKL, directory / "vae")
        text_encoder = load_text_encoder(CLIPTextModel, directory / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        return cls(
            unet,
            vae,
            text_encoder,
            tokenizer,
            ddpm_schedule(sched_cfg),
            labels,
            prompt_template=prompt_template,
            null_prompt=null_prompt,
            scheduler_config=sched_cfg,
        )

    def _index_extras(self) -> dict:
        return {"requires_safety_checker": False}

    def _meta(self) -> dict:
        return {"prompt_template": self.prompt_template, "null_prompt": self.null_prompt}

    # ------------------------------------------------------------------ conditioning
    @property
    def prompts(self) -> tuple[str, ...]:
        """The L + 1 prompts: index 0 the null prompt, index i + 1 the prompt of labels[i]."""
        return self._prompts

    def _encode_conditioning(self) -> dict[str, Tensor]:
        te = next(self.text_encoder.parameters())
        tokens = self.tokenizer(
            list(self._prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tokens.input_ids.to(te.device))[0]
        self.text_encoder_calls += 1
        return {"hidden": hidden}

    def text_embeddings(self) -> Tensor:
        """Encoder hidden states of the L + 1 prompts (L+1, seq, dim), on the UNet's device and dtype (cached)."""
        return self.conditioning()["hidden"]

    # ------------------------------------------------------------------ the network
    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """The UNet's eps or v under the prompts of `cond` (B,) (0 = the null prompt), in its dtype."""
        emb = self.text_embeddings()
        return self.unet(x.to(self.dtype), timestep, encoder_hidden_states=emb[cond.to(emb.device)]).sample

    def feature_blocks(self) -> Sequence[nn.Module]:
        return self.unet.up_blocks


def _check_compatible(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, prediction: str
) -> None:
    """ValueError naming the values when the parts of an SD directory do not fit together."""
    problems = []
    uc = unet.config
    if uc.in_channels != vae.config.latent_channels:
        problems.append(f"unet in_channels {uc.in_channels} != vae latent_channels {vae.config.latent_channels}")
    if uc.out_channels != uc.in_channels:
        problems.append(
            f"unet out_channels {uc.out_channels} != in_channels {uc.in_channels} (not an eps- or v-predictor)"
        )
    hidden = text_encoder.config.hidden_size
    if uc.cross_attention_dim != hidden:
        problems.append(f"unet cross_attention_dim {uc.cross_attention_dim} != text encoder hidden_size {hidden}")
    if prediction not in ("epsilon", "v_prediction"):
        problems.append(f"scheduler prediction_type {prediction!r} is neither 'epsilon' nor 'v_prediction'")
    if problems:
        raise ValueError("incompatible Stable Diffusion parts: " + "; ".join(problems))
