"""SDXL: a text-time UNet over VAE latents, two CLIP text encoders.

`StableDiffusionXL` wraps a local diffusers ``StableDiffusionXLPipeline`` directory and conditions
exactly as that pipeline does:

- each prompt goes through both tokenizers and text encoders; the penultimate hidden states of
  ``text_encoder`` (CLIP ViT-L) and ``text_encoder_2`` (OpenCLIP ViT-bigG, with projection) are
  concatenated (768 + 1280 = 2048 channels of cross-attention), and the pooled, projected
  ``text_embeds`` of the second go to the UNet's additional embedding;
- ``time_ids`` = (original height, original width, crop top, crop left, target height, target
  width) of the image, here (H, W, 0, 0, H, W) from the latent grid (working images are not cropped);
- the null conditioning is the pipeline's: with ``force_zeros_for_empty_prompt`` (SDXL base ships
  it) and an empty null prompt, zeros for both the states and the pooled embeds; otherwise the
  encoded null prompt;
- the schedule is the checkpoint's DDPM betas (scaled-linear), eps or v prediction;
- features: output of ``unet.up_blocks[block]``; SDXL's first decoder block (0) outputs 1280
  channels at 1/16 of the image, the resolution of the paper's SD 1.5 block 1.

Defaults of the family: working images of 1024 px on the short side (SDXL's training resolution),
feature block 0, LoRA above 2 B parameters (the SDXL base UNet has 2.6 B).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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

__all__ = ["StableDiffusionXL"]


class StableDiffusionXL(LatentDiffusion):
    """A text-conditional latent DDPM of the SDXL family (index 0 = the null prompt)."""

    family = "sdxl"
    title = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    denoiser_part = "unet"
    # the parts LatentDiffusion.__init__ sets by name (setattr), declared for the type checker
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    PARTS: ClassVar[dict[str, Part]] = {
        "unet": Part(),
        "vae": Part(),
        "text_encoder": Part(),
        "text_encoder_2": Part(),
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,
        "scheduler": SCHEDULER,
    }

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        scheduler,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
        scheduler_config: dict | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        prompts = label_prompts(labels, prompt_template, null_prompt)
        sched_cfg = dict(scheduler_config if scheduler_config is not None else scheduler.config)
        sched_cfg.setdefault("_class_name", type(scheduler).__name__)
        prediction = sched_cfg.get("prediction_type", "epsilon")
        _check_compatible(unet, vae, text_encoder, text_encoder_2, prediction)
        super().__init__(
            unet,
            vae,
            labels,
            alphas_cumprod=torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32),
            prediction=prediction,
            scheduler_config=sched_cfg,
            frozen={
                "text_encoder": text_encoder,
                "text_encoder_2": text_encoder_2,
                "tokenizer": tokenizer,
                "tokenizer_2": tokenizer_2,
                "image_encoder": None,
                "feature_extractor": None,
            },
        )
        self.prompt_template, self.null_prompt = prompt_template, null_prompt
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self._prompts = prompts

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def detect(cls, index: dict, directory: Path) -> bool:
        """A UNet with SDXL's text-time additional embedding and both text encoders."""
        if index.get("unet") is None or index.get("text_encoder") is None or index.get("text_encoder_2") is None:
            return False
        cfg = directory / "unet" / "config.json"
        return cfg.is_file() and read_json(cfg).get("addition_embed_type") == "text_time"

    @classmethod
    def inspect(cls, directory: Path, index: dict) -> CheckpointInfo:
        check_layout(directory, cls.PARTS, cls.title)
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
            native_resolution=int(unet_cfg.get("sample_size", 128)) * factor,
            fixed_resolution=False,
            parameters=safetensors_parameters(directory / "unet"),
            conditioning="prompt",
            defaults={"data": {"resolution": 1024}, "rank": {"feature_block": 0}},
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
    ) -> StableDiffusionXL:
        """Load a local diffusers SDXL directory for `labels` (CPU; the UNet in `dtype`, fp32 if None;
        the VAE and text encoders in fp32)."""
        directory = Path(directory)
        check_layout(directory, cls.PARTS, cls.title)
        label_prompts(labels, prompt_template, null_prompt)
        index = read_json(directory / "model_index.json")
        sched_cfg = read_json(directory / "scheduler" / "scheduler_config.json")
        return cls(
            load_diffusers(UNet2DConditionModel, directory / "unet", torch.float32 if dtype is None else dtype),
            load_diffusers(AutoencoderKL, directory / "vae"),
            load_text_encoder(CLIPTextModel, directory / "text_encoder"),
            load_text_encoder(CLIPTextModelWithProjection, directory / "text_encoder_2"),
            CLIPTokenizer.from_pretrained(directory / "tokenizer"),
            CLIPTokenizer.from_pretrained(directory / "tokenizer_2"),
            ddpm_schedule(sched_cfg),
            labels,
            prompt_template=prompt_template,
            null_prompt=null_prompt,
            scheduler_config=sched_cfg,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        )

    def _index_extras(self) -> dict:
        return {"force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt}

    def _meta(self) -> dict:
        return {"prompt_template": self.prompt_template, "null_prompt": self.null_prompt}

    # ------------------------------------------------------------------ conditioning
    @property
    def prompts(self) -> tuple[str, ...]:
        """The L + 1 prompts: index 0 the null prompt, index i + 1 the prompt of labels[i]."""
        return self._prompts

    def _encode_conditioning(self) -> dict[str, Tensor]:
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                list(self._prompts),
                padding="max_length",
                truncation=True,
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            if out[0].dim() == 2:  # the projected, pooled text_embeds of the encoder with projection
                pooled = out[0]
            states.append(out.hidden_states[-2])
            self.text_encoder_calls += 1
        hidden = torch.cat([s.to(states[0].device) for s in states], dim=-1)
        assert pooled is not None  # text_encoder_2 has a projection: its first output is the pooled embeds
        pooled = pooled.to(hidden.device)
        if self.force_zeros_for_empty_prompt and self.null_prompt == "":
            hidden[0], pooled[0] = 0.0, 0.0  # the pipeline's unconditional branch: zeros, not the encoded ""
        return {"hidden": hidden, "pooled": pooled}

    # ------------------------------------------------------------------ the network
    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """The UNet's eps or v under the prompts of `cond` (0 = the null conditioning), with the
        time ids of the image size (H, W, 0, 0, H, W)."""
        c = self.conditioning()
        idx = cond.to(c["hidden"].device)
        h, w = (int(s) * self.latent_factor for s in x.shape[-2:])
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=x.device, dtype=self.dtype).expand(x.shape[0], -1)
        return self.unet(
            x.to(self.dtype),
            timestep,
            encoder_hidden_states=c["hidden"][idx],
            added_cond_kwargs={"text_embeds": c["pooled"][idx], "time_ids": time_ids},
        ).sample

    def feature_blocks(self) -> Sequence[nn.Module]:
        return self.unet.up_blocks


def _check_compatible(unet, vae, text_encoder, text_encoder_2, prediction: str) -> None:
    """ValueError naming the values when the parts of an SDXL directory do not fit together."""
    problems = []
    uc = unet.config
    if uc.in_channels != vae.config.latent_channels:
        problems.append(f"unet in_channels {uc.in_channels} != vae latent_channels {vae.config.latent_channels}")
    width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    if uc.cross_attention_dim != width:
        problems.append(f"unet cross_attention_dim {uc.cross_attention_dim} != the two text encoders' widths {width}")
    expected = text_encoder_2.config.projection_dim + 6 * uc.addition_time_embed_dim
    if uc.projection_class_embeddings_input_dim != expected:
        problems.append(
            f"unet projection_class_embeddings_input_dim {uc.projection_class_embeddings_input_dim} != text_encoder_2 "
            f"projection_dim + 6 time ids x {uc.addition_time_embed_dim} = {expected}"
        )
    if prediction not in ("epsilon", "v_prediction"):
        problems.append(f"scheduler prediction_type {prediction!r} is neither 'epsilon' nor 'v_prediction'")
    if problems:
        raise ValueError("incompatible SDXL parts: " + "; ".join(problems))
