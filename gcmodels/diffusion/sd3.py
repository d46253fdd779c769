"""SD3 / SD3.5: a flow-matching MMDiT over a 16-channel VAE, three text encoders (T5 optional).

`StableDiffusion3` wraps a local diffusers ``StableDiffusion3Pipeline`` directory and conditions
exactly as that pipeline does:

- each prompt goes through the two CLIP encoders (penultimate hidden states concatenated on the
  channel axis and zero-padded to the joint attention width, pooled projected embeds concatenated)
  and the T5 encoder (its last hidden states over 256 tokens, appended after the CLIP tokens); a
  checkpoint without ``text_encoder_3`` gets zeros in the T5 slot, as the pipeline does;
- the null prompt is encoded like any other prompt (the pipeline's empty negative prompt);
- the network is rectified flow: x_s = (1 - s) x0 + s eps, it predicts u = eps - x0 at timestep
  s x 1000 and trains on that target with the timestep density of diffusers' SD3 training scripts
  (logit-normal, the scheduler's shift, `gcmodels.diffusion.parametrisation.flow_training_sigmas`);
- for scoring, features and translation it is read like every model on a DDPM reference schedule,
  SD 1.x's scaled-linear one: reference step t is asked at the flow level s of equal SNR and its
  velocity is converted to eps (`ConditionalDiffusion.predict_noise`), so ``score.t_min`` /
  ``t_max`` keep their meaning (t in [100, 700) -> s in about [0.26, 0.77]);
- latents whose grid is not a multiple of the patch size (working images keep their aspect ratio
  and are rounded to multiples of 8 pixels, the patches are 16 pixels) are padded by edge
  replication to the next multiple and the output is cropped back;
- features: the image tokens output by ``transformer.transformer_blocks[block]``, laid back on the
  (padded) patch grid: (B, width, h / 2, w / 2).

Defaults of the family: working images of 1024 px on the short side, the middle transformer block
for features, LoRA above 2 B parameters (SD3 medium has 2.0 B, SD3.5 large 8.1 B).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel
from torch import Tensor, nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from gcmodels.diffusion.latent import (
    DEFAULT_NULL_PROMPT,
    DEFAULT_PROMPT_TEMPLATE,
    SCHEDULER,
    TOKENIZER,
    CheckpointInfo,
    LatentDiffusion,
    Part,
    check_layout,
    label_prompts,
    load_diffusers,
    load_text_encoder,
    read_json,
    safetensors_parameters,
    vae_factor,
)
from gcmodels.diffusion.parametrisation import SD_REFERENCE_SCHEDULE, ddpm_alphas_cumprod

__all__ = ["StableDiffusion3"]

T5_MAX_LENGTH = 256  # the SD3 pipeline's max_sequence_length default


class StableDiffusion3(LatentDiffusion):
    """A text-conditional latent flow-matching model of the SD3 family (index 0 = the null prompt)."""

    family = "sd3"
    title = "SD3/SD3.5"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_part = "transformer"
    # the parts LatentDiffusion.__init__ sets by name (setattr), declared for the type checker
    transformer: SD3Transformer2DModel
    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    text_encoder_3: T5EncoderModel | None
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    tokenizer_3: T5Tokenizer | None
    block_kind = "transformer"
    block_name = "transformer block"
    PARTS: ClassVar[dict[str, Part]] = {
        "transformer": Part(),
        "vae": Part(),
        "text_encoder": Part(),
        "text_encoder_2": Part(),
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,
        "text_encoder_3": Part(optional=True),
        "tokenizer_3": Part(None, False, tokenizer=True, optional=True),
        "scheduler": SCHEDULER,
    }

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection,
        text_encoder_2: CLIPTextModelWithProjection,
        text_encoder_3: T5EncoderModel | None,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        tokenizer_3: T5Tokenizer | None,
        scheduler_config: dict,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
    ) -> None:
        prompts = label_prompts(labels, prompt_template, null_prompt)
        _check_compatible(transformer, vae, text_encoder, text_encoder_2, text_encoder_3)
        super().__init__(
            transformer,
            vae,
            labels,
            alphas_cumprod=ddpm_alphas_cumprod(**SD_REFERENCE_SCHEDULE),
            prediction="flow_matching",
            scheduler_config=scheduler_config,
            frozen={
                "text_encoder": text_encoder,
                "text_encoder_2": text_encoder_2,
                "text_encoder_3": text_encoder_3,
                "tokenizer": tokenizer,
                "tokenizer_2": tokenizer_2,
                "tokenizer_3": tokenizer_3,
                "image_encoder": None,
                "feature_extractor": None,
            },
        )
        self.prompt_template, self.null_prompt = prompt_template, null_prompt
        self._prompts = prompts
        self.flow_shift = float(scheduler_config.get("shift", 1.0))
        self.flow_timesteps = float(scheduler_config.get("num_train_timesteps", 1000))

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def detect(cls, index: dict, directory: Path) -> bool:
        """An SD3 transformer (MMDiT) named in model_index.json or in its config."""
        if index.get("transformer") is None:
            return False
        named = index["transformer"][-1] if isinstance(index["transformer"], list) else None
        cfg = directory / "transformer" / "config.json"
        return named == "SD3Transformer2DModel" or (
            cfg.is_file() and read_json(cfg).get("_class_name") == "SD3Transformer2DModel"
        )

    @classmethod
    def inspect(cls, directory: Path, index: dict) -> CheckpointInfo:
        check_layout(directory, cls.PARTS, cls.title)
        cfg = read_json(directory / "transformer" / "config.json")
        layers = cfg.get("num_layers")
        if not isinstance(layers, int) or layers < 1:
            raise _layout(
                directory / "transformer" / "config.json", f"num_layers must be a positive integer, got {layers!r}"
            )
        factor = vae_factor(read_json(directory / "vae" / "config.json"))
        t5 = index.get("text_encoder_3", [None])[0] is not None and (directory / "text_encoder_3").is_dir()
        return CheckpointInfo(
            family=cls.family,
            title=cls.title,
            pipeline=str(index.get("_class_name")),
            directory=str(directory),
            prediction="flow_matching",
            feature_blocks=layers,
            block_name="transformer block",
            native_resolution=int(cfg.get("sample_size", 128)) * factor,
            fixed_resolution=False,
            parameters=safetensors_parameters(directory / "transformer"),
            conditioning="prompt",
            defaults={"data": {"resolution": 1024}, "rank": {"feature_block": layers // 2}},
            notes=()
            if t5
            else ("no text_encoder_3: the T5 slot of the prompt states is zeros, as the SD3 pipeline does without it",),
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
    ) -> StableDiffusion3:
        """Load a local diffusers SD3 / SD3.5 directory for `labels` (CPU; the transformer in
        `dtype`, fp32 if None; the VAE and text encoders in fp32; T5 if the directory has it)."""
        directory = Path(directory)
        check_layout(directory, cls.PARTS, cls.title)
        label_prompts(labels, prompt_template, null_prompt)
        index = read_json(directory / "model_index.json")
        t5 = index.get("text_encoder_3", [None])[0] is not None and (directory / "text_encoder_3").is_dir()
        return cls(
            load_diffusers(SD3Transformer2DModel, directory / "transformer", torch.float32 if dtype is None else dtype),
            load_diffusers(AutoencoderKL, directory / "vae"),
            load_text_encoder(CLIPTextModelWithProjection, directory / "text_encoder"),
            load_text_encoder(CLIPTextModelWithProjection, directory / "text_encoder_2"),
            load_text_encoder(T5EncoderModel, directory / "text_encoder_3") if t5 else None,
            CLIPTokenizer.from_pretrained(directory / "tokenizer"),
            CLIPTokenizer.from_pretrained(directory / "tokenizer_2"),
            T5Tokenizer.from_pretrained(directory / "tokenizer_3") if t5 else None,
            read_json(directory / "scheduler" / "scheduler_config.json"),
            labels,
            prompt_template=prompt_template,
            null_prompt=null_prompt,
        )

    def _meta(self) -> dict:
        return {"prompt_template": self.prompt_template, "null_prompt": self.null_prompt}

    # ------------------------------------------------------------------ conditioning
    @property
    def prompts(self) -> tuple[str, ...]:
        """The L + 1 prompts: index 0 the null prompt, index i + 1 the prompt of labels[i]."""
        return self._prompts

    def _encode_conditioning(self) -> dict[str, Tensor]:
        prompts = list(self._prompts)
        length = self.tokenizer.model_max_length  # the pipeline's tokenizer_max_length, for both CLIPs
        states, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            pooled.append(out[0])
            states.append(out.hidden_states[-2])
            self.text_encoder_calls += 1
        device = states[0].device
        clip = torch.cat([s.to(device) for s in states], dim=-1)
        width = int(self.transformer.config.joint_attention_dim)
        if self.text_encoder_3 is None:
            t5 = torch.zeros(len(prompts), T5_MAX_LENGTH, width, device=device)
        else:
            assert self.tokenizer_3 is not None  # loaded with text_encoder_3 (from_pretrained)
            ids = self.tokenizer_3(
                prompts,
                padding="max_length",
                max_length=T5_MAX_LENGTH,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids
            t5 = self.text_encoder_3(ids.to(next(self.text_encoder_3.parameters()).device))[0].to(device)
            self.text_encoder_calls += 1
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"hidden": torch.cat([clip, t5], dim=-2), "pooled": torch.cat([p.to(device) for p in pooled], dim=-1)}

    # ------------------------------------------------------------------ the network
    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """The transformer's flow velocity at `timestep` (s x 1000) under the prompts of `cond`;
        x padded to a multiple of the patch size, the output cropped back."""
        c = self.conditioning()
        idx = cond.to(c["hidden"].device)
        p = int(self.transformer.config.patch_size)
        h, w = x.shape[-2:]
        limit = self.transformer.config.pos_embed_max_size
        if limit is not None and (-(-h // p) > limit or -(-w // p) > limit):
            raise ValueError(
                f"latents of {h}x{w} ({h * self.latent_factor}x{w * self.latent_factor} px) exceed the transformer's "
                f"position grid of {limit}x{limit} patches of {p}: lower data.resolution or data.max_aspect"
            )
        padded = (
            F.pad(x.to(self.dtype), (0, -w % p, 0, -h % p), mode="replicate") if (h % p or w % p) else x.to(self.dtype)
        )
        out = self.transformer(
            hidden_states=padded,
            timestep=timestep.to(self.dtype).expand(x.shape[0]),
            encoder_hidden_states=c["hidden"][idx],
            pooled_projections=c["pooled"][idx],
            return_dict=False,
        )[0]
        return out[..., :h, :w]

    def feature_blocks(self) -> Sequence[nn.Module]:
        return self.transformer.transformer_blocks

    def _feature_grid(self, output, x: Tensor) -> Tensor:
        """A joint block's image tokens (B, N, D) -> (B, D, h / p, w / p) on the padded patch grid."""
        tokens = output[1] if isinstance(output, tuple) else output
        p = int(self.transformer.config.patch_size)
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)


def _layout(path: Path, what: str):
    from gcmodels.diffusion.latent import ModelLayoutError

    return ModelLayoutError(f"{path}: {what}")


def _check_compatible(transformer, vae, text_encoder, text_encoder_2, text_encoder_3) -> None:
    """ValueError naming the values when the parts of an SD3 directory do not fit together."""
    problems = []
    tc = transformer.config
    if tc.in_channels != vae.config.latent_channels:
        problems.append(f"transformer in_channels {tc.in_channels} != vae latent_channels {vae.config.latent_channels}")
    clip = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    if clip > tc.joint_attention_dim:
        problems.append(
            f"the two CLIP widths {clip} exceed the transformer's joint_attention_dim {tc.joint_attention_dim}"
        )
    pooled = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
    if pooled != tc.pooled_projection_dim:
        problems.append(
            f"the CLIP projections {pooled} != the transformer's pooled_projection_dim {tc.pooled_projection_dim}"
        )
    if text_encoder_3 is not None and text_encoder_3.config.d_model != tc.joint_attention_dim:
        problems.append(
            f"text_encoder_3 d_model {text_encoder_3.config.d_model} != joint_attention_dim {tc.joint_attention_dim}"
        )
    if problems:
        raise ValueError("incompatible SD3 parts: " + "; ".join(problems))
