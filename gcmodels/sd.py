"""A local Stable Diffusion v1.x directory behind gcmine's conditional diffusion interface.

`LatentDiffusion` wraps the UNet, VAE, CLIP text encoder, tokenizer and noise schedule of a
diffusers SD v1.x directory and exposes what `gcmodels.diffusion.PixelDiffusion` exposes, so the
typicality estimator, the trainer and the patch features take either:

- labels are a vocabulary (index 0 = the null label, label ``i`` = index ``i + 1``); each label
  becomes a prompt through ONE template (``"An image of {label}."``), index 0 the null prompt;
  the L + 1 prompts are encoded once by the frozen text encoder and cached;
- ``encode``: uint8 images -> VAE latents (``decode`` goes back to uint8 images), the MEAN of the encoder's distribution (deterministic)
  times the VAE's scaling factor (0.18215 for SD v1.x). The paper samples the latent; the mean is
  the same point without the encoder's small noise, so scores do not depend on an extra draw;
- ``add_noise``: DDPM forward process with the checkpoint's betas (scaled-linear 0.00085-0.012),
  whatever sampler class ``scheduler/`` names; the UNet predicts eps (v-prediction is refused);
- ``decoder_features``: DIFT activations (output of ``unet.up_blocks[block]``) at latent resolution.

Training knobs: full fine-tuning (the paper's default), `enable_lora` (peft LoRA on the attention
projections; `save` merges it into the weights), `enable_gradient_checkpointing`. VAE and text
encoder are frozen and always in eval mode.

Precision and devices: `half_precision(dtype)` casts the UNet only (scoring on a GPU in fp16/bf16);
the VAE and text encoder may stay fp32 (and even on another device): `encode` runs the VAE where it
is and returns fp32 latents on the UNet's device; the text embeddings are computed where the text
encoder is and cast to the UNet's device and dtype. `alphas_cumprod` stays fp32 whatever `.to()` does.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from gcmodels.diffusion import NULL_LABEL, PixelDiffusion, validate_label_vocabulary
from gcmodels.prompts import render_prompt, validate_prompt_template

__all__ = [
    "DEFAULT_NULL_PROMPT",
    "DEFAULT_PROMPT_TEMPLATE",
    "LORA_TARGET_MODULES",
    "LatentDiffusion",
    "LatentEncoder",
    "SDLayoutError",
    "check_sd_directory",
    "load_any_model",
    "render_prompt",
    "validate_prompt_template",
]

DEFAULT_PROMPT_TEMPLATE = "An image of {label}."
DEFAULT_NULL_PROMPT = ""
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
_META = "gcmine_model.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
# part -> (config file it must hold, whether it must hold weights)
_PARTS: dict[str, tuple[str | None, bool]] = {
    "unet": ("config.json", True),
    "vae": ("config.json", True),
    "text_encoder": ("config.json", True),
    "tokenizer": (None, False),
    "scheduler": ("scheduler_config.json", False),
}


class SDLayoutError(ValueError):
    """A directory is not a diffusers Stable Diffusion directory; the message names every missing part."""


# ---------------------------------------------------------------------- layout
def check_sd_directory(directory: str | Path) -> None:
    """Raise SDLayoutError naming `directory` and every missing part if it is not a complete
    diffusers Stable Diffusion directory (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/). Loads nothing."""
    _check_layout(Path(directory))


def decoder_block_count(directory: str | Path) -> int:
    """Decoder blocks (``up_block_types``) of the UNet of the SD `directory`, read from
    ``unet/config.json`` without loading any weights: the valid range of ``rank.feature_block``
    is ``-n .. n - 1``. SDLayoutError naming the file if it cannot tell."""
    directory = Path(directory)
    _check_layout(directory, ("unet",), index=False)
    path = directory / "unet" / "config.json"
    try:
        blocks = json.loads(path.read_text())["up_block_types"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SDLayoutError(f"{path}: cannot read the UNet's up_block_types ({type(err).__name__}: {err})") from None
    if not isinstance(blocks, list) or not blocks:
        raise SDLayoutError(f"{path}: up_block_types must be a non-empty list, got {blocks!r}")
    return len(blocks)


def _check_layout(directory: Path, parts: Sequence[str] = tuple(_PARTS), *, index: bool = True) -> None:
    """Raise SDLayoutError naming `directory` and every missing one of `parts` (and of
    ``model_index.json`` if `index`) of a diffusers SD layout."""
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise SDLayoutError(f"{directory} is not a diffusers Stable Diffusion directory: it {what}")
    missing: list[str] = []
    if index and not (directory / "model_index.json").is_file():
        missing.append("model_index.json")
    for part in parts:
        config, weights = _PARTS[part]
        folder = directory / part
        if not folder.is_dir():
            missing.append(f"{part}/ (a file, not a directory)" if folder.exists() else f"{part}/")
            continue
        lacks: list[str] = []
        if config is not None and not (folder / config).is_file():
            lacks.append(config)
        if weights and not any(p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()):
            lacks.append("weights *.safetensors or *.bin")
        if part == "tokenizer" and not any(all((folder / f).is_file() for f in files) for files in _TOKENIZER_FILES):
            lacks.append("vocab.json + merges.txt or tokenizer.json")
        if lacks:
            missing.append(f"{part}/ ({', '.join(lacks)})")
    if missing:
        raise SDLayoutError(f"{directory} is not a diffusers Stable Diffusion directory: missing {', '.join(missing)}")


class _StopForward(Exception):
    """Raised by a feature hook to end a UNet forward once the wanted block has run."""


# ---------------------------------------------------------------------- the model
class LatentDiffusion(nn.Module):
    """A text-conditional latent DDPM (SD v1.x, eps-prediction) with a label vocabulary.

    Index 0 is the null prompt, index i + 1 the prompt of ``labels[i]``."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDPMScheduler,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
        scheduler_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.labels = validate_label_vocabulary(labels)
        self.prompt_template = validate_prompt_template(prompt_template)
        if not isinstance(null_prompt, str):
            raise ValueError(f"the null prompt must be a string, got {null_prompt!r}")
        self.null_prompt = null_prompt
        prompts = [render_prompt(prompt_template, lab) for lab in self.labels]
        seen: dict[str, str] = {}
        clashes = []
        for lab, prompt in zip(self.labels, prompts):
            if prompt == null_prompt:
                clashes.append(f"{lab!r} renders to the null prompt {prompt!r}")
            elif prompt in seen:
                clashes.append(f"{seen[prompt]!r} and {lab!r} both render to {prompt!r}")
            seen.setdefault(prompt, lab)
        if clashes:
            raise ValueError(f"labels must give distinct prompts: {'; '.join(clashes[:5])}")
        self._prompts = (null_prompt, *prompts)
        _check_compatible(unet, vae, text_encoder, scheduler)

        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        # The original scheduler config (its own class, e.g. PNDMScheduler) is what `save` writes back.
        self._scheduler_config = dict(scheduler_config if scheduler_config is not None else scheduler.config)
        self._scheduler_config.setdefault("_class_name", type(scheduler).__name__)
        for frozen in (vae, text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        unet.set_attn_processor(AttnProcessor2_0())
        vae.set_attn_processor(AttnProcessor2_0())
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), persistent=False
        )
        self._text_cache: tuple[tuple, Tensor] | None = None
        self.text_encoder_calls = 0  # forwards of the text encoder so far (the cache's cost)
        self._lora: dict | None = None

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_base(
        cls,
        directory: str | Path,
        labels: Sequence[str],
        *,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        null_prompt: str = DEFAULT_NULL_PROMPT,
        dtype: torch.dtype | None = None,
    ) -> "LatentDiffusion":
        """Load a local diffusers SD v1.x directory for `labels` (CPU; the UNet in `dtype`, fp32 if None).

        Raises SDLayoutError naming every missing part before loading anything, and ValueError
        if the parts do not fit together (channels, cross-attention width, prediction type)."""
        directory = Path(directory)
        _check_layout(directory)
        labels = validate_label_vocabulary(labels)
        validate_prompt_template(prompt_template)
        unet, vae, text_encoder, tokenizer, scheduler, sched_cfg = _load_parts(directory, dtype)
        return cls(
            unet, vae, text_encoder, tokenizer, scheduler, labels,
            prompt_template=prompt_template, null_prompt=null_prompt, scheduler_config=sched_cfg,
        )

    def save(self, directory: str | Path) -> None:
        """Write a diffusers SD directory (``model_index.json`` + the five parts, loadable by
        ``StableDiffusionPipeline.from_pretrained(directory, safety_checker=None)``) plus
        ``gcmine_model.json`` (kind "sd", labels, prompt template, null prompt).

        With LoRA on, the saved UNet is a plain UNet with the adapter MERGED into its weights
        (W + scale B A); the model in memory keeps its separate adapter. `load` thus returns a
        full-weight model whose outputs equal this one's up to float rounding."""
        import diffusers

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._plain_unet().save_pretrained(directory / "unet")
        self.vae.save_pretrained(directory / "vae")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        sched_dir = directory / "scheduler"
        sched_dir.mkdir(exist_ok=True)
        (sched_dir / "scheduler_config.json").write_text(json.dumps(self._scheduler_config, indent=2))
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", self._scheduler_config["_class_name"]],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (directory / "model_index.json").write_text(json.dumps(index, indent=2))
        meta = {
            "kind": "sd",
            "labels": list(self.labels),
            "prompt_template": self.prompt_template,
            "null_prompt": self.null_prompt,
        }
        (directory / _META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path, *, dtype: torch.dtype | None = None) -> "LatentDiffusion":
        """Read back a directory written by `save` (CPU; the UNet in `dtype`, fp32 if None)."""
        directory = Path(directory)
        meta = _read_meta(directory)
        if meta.get("kind") != "sd":
            raise ValueError(f"{directory} holds a gcmine model of kind {meta.get('kind')!r}, not 'sd'")
        return cls.from_base(
            directory, meta["labels"], prompt_template=meta["prompt_template"], null_prompt=meta["null_prompt"], dtype=dtype
        )

    def _plain_unet(self) -> UNet2DConditionModel:
        """The UNet without peft wrappers: itself without LoRA, else a UNet whose LoRA targets hold
        W + delta (built on the meta device and filled by assignment: only the merged layers are new)."""
        if self._lora is None:
            return self.unet
        from peft.tuners.tuners_utils import BaseTunerLayer

        state: dict[str, Tensor] = {}
        for name, module in self.unet.named_modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
                weight = base.weight.detach()
                for adapter in module.active_adapters:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
                state[f"{name}.weight"] = weight
                if base.bias is not None:
                    state[f"{name}.bias"] = base.bias.detach()
        for key, value in self.unet.state_dict().items():
            if "lora_" in key:
                continue
            plain_key = key.replace(".base_layer.", ".")
            state.setdefault(plain_key, value)
        with torch.device("meta"):
            plain = UNet2DConditionModel.from_config(self.unet.config)
        plain.load_state_dict(state, strict=True, assign=True)
        return plain

    # ------------------------------------------------------------------ properties
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        """Where the UNet is (latents and predictions live there)."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype (inputs are cast to it; latents stay fp32)."""
        return next(self.unet.parameters()).dtype

    @property
    def latent_factor(self) -> int:
        """Image size / latent size: 2 ** (VAE levels - 1), 8 for SD."""
        return _latent_factor(self.vae)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def prompts(self) -> tuple[str, ...]:
        """The L + 1 prompts: index 0 the null prompt, index i + 1 the prompt of labels[i]."""
        return self._prompts

    def label_index(self, labels: Sequence[str | None]) -> Tensor:
        """Label strings -> prompt indices (B,) long; None -> the null prompt 0."""
        lookup = {lab: i + 1 for i, lab in enumerate(self.labels)}
        unknown = sorted({lab for lab in labels if lab is not None and lab not in lookup})
        if unknown:
            raise ValueError(f"labels unknown to the model: {unknown[:5]!r}; the model knows {list(self.labels)[:10]!r}")
        return torch.tensor([NULL_LABEL if lab is None else lookup[lab] for lab in labels], dtype=torch.long)

    # ------------------------------------------------------------------ modes, precision, training knobs
    def train(self, mode: bool = True) -> "LatentDiffusion":
        """Train/eval mode for the UNet only: the VAE and the text encoder always stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # A module-wide .to(dtype) casts floating buffers; the schedule must stay fp32.
        if self.alphas_cumprod.dtype != torch.float32:
            self.alphas_cumprod = self.alphas_cumprod.float()
        return self

    def half_precision(self, dtype: torch.dtype = torch.float16) -> "LatentDiffusion":
        """Cast the UNet (only) to `dtype` (fp16/bf16 for scoring on a GPU); returns self."""
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"the UNet's dtype must be float16, bfloat16 or float32, got {dtype}")
        self.unet.to(dtype=dtype)
        return self

    def enable_gradient_checkpointing(self) -> "LatentDiffusion":
        """Recompute UNet activations in the backward pass (less memory, same gradients); returns self."""
        self.unet.enable_gradient_checkpointing()
        return self

    def enable_lora(
        self, rank: int, alpha: float | None = None, *, generator: torch.Generator | None = None
    ) -> "LatentDiffusion":
        """Freeze the UNet and add a peft LoRA adapter of `rank` (scale alpha / rank, alpha = rank if
        None) on the attention projections to_q, to_k, to_v, to_out.0: only the adapter trains.
        B starts at zero, so the model's outputs are unchanged until it trains. The random A
        matrices are drawn from `generator` (peft draws from the global RNG: it is forked, so the
        caller's state is untouched and the same generator gives the same adapter). Returns self."""
        from peft import LoraConfig

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
        if self._lora is not None:
            raise ValueError(f"LoRA is already enabled ({self._lora}); enable it once")
        alpha = float(rank if alpha is None else alpha)
        self.unet.requires_grad_(False)
        config = LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES)
        )
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.unet.add_adapter(config)
        self._lora = {"rank": rank, "alpha": alpha}
        return self

    @property
    def lora(self) -> dict | None:
        """{"rank", "alpha"} when LoRA is on, else None."""
        return None if self._lora is None else dict(self._lora)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """UNet parameters that require grad: all of them for full fine-tuning, the adapter's with LoRA."""
        return [p for p in self.unet.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ text conditioning
    def text_embeddings(self) -> Tensor:
        """Encoder hidden states of the L + 1 prompts (L+1, seq, dim), on the UNet's device and dtype.

        Computed once by the frozen text encoder (padded to the tokenizer's model_max_length,
        truncated) and cached; recomputed only when the UNet's or the text encoder's device or
        dtype changed. Never part of an autograd graph (and usable inside or outside inference mode)."""
        te = next(self.text_encoder.parameters())
        key = (te.device, te.dtype, self.device, self.dtype)
        if self._text_cache is None or self._text_cache[0] != key:
            tokens = self.tokenizer(
                list(self._prompts),
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            )
            with torch.inference_mode(False), torch.no_grad():
                hidden = self.text_encoder(tokens.input_ids.to(te.device))[0]
                self.text_encoder_calls += 1
                self._text_cache = (key, hidden.to(self.device, self.dtype))
        return self._text_cache[1]

    # ------------------------------------------------------------------ diffusion math
    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> latents (B, 4, H/f, W/f) float32 on the UNet's device.

        (mean of q(z | x) - shift_factor) * scaling_factor, images mapped to [-1, 1]; f =
        `latent_factor`; H and W must be multiples of f."""
        return _vae_encode(self.vae, images).to(self.device)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> uint8 images (B, 3, h f, w f) on the latents' device: the VAE
        decoder applied to latents / scaling_factor (+ shift_factor), clipped to [-1, 1]; the
        inverse of `encode` up to the VAE's reconstruction error."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents (B, {self.latent_channels}, h, w), got shape {tuple(latents.shape)}")
        p = next(self.vae.parameters())
        z = latents.detach().to(p.device, torch.float32) / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        with torch.no_grad():
            x = self.vae.decode(z.to(p.dtype)).sample.float()
        return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8).to(latents.device)

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """DDPM forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. t: (B,) long."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps_theta(x_t, t, prompt[cond]): x_t (B, 4, h, w), t (B,) long, cond (B,) long (0 = null)
        -> (B, 4, h, w) in the UNet's dtype."""
        emb = self.text_embeddings()
        hidden = emb[cond.to(emb.device)]  # (B, seq, dim)
        return self.unet(x_t.to(self.dtype), t, encoder_hidden_states=hidden).sample

    def training_loss(self, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample eps-prediction MSE with t uniform over all training steps: (B,) float32."""
        b = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device="cpu").to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
        pred = self.predict_noise(self.add_noise(x0, eps, t), t, cond)
        return (pred.float() - eps).pow(2).flatten(1).mean(1)

    def decoder_features(
        self, x0: Tensor, cond: Tensor, t: int, noise: Tensor, block: int, *, max_batch: int | None = None
    ) -> Tensor:
        """Decoder activations (DIFT): output of ``unet.up_blocks[block]`` (negative = from the end)
        at timestep `t`, averaged over the noise draws `noise` (D, 4, h, w).
        x0 latents (B, 4, h, w), cond (B,) -> (B, F, h', w') float32.

        All B x D noisy inputs go through the UNet in one forward (at most `max_batch` inputs per
        forward if given), and each forward stops once the wanted block has run."""
        n_blocks = len(self.unet.up_blocks)
        if not -n_blocks <= block < n_blocks:
            raise ValueError(f"feature block {block} out of range: the UNet has {n_blocks} decoder blocks")
        if noise.dim() != 4 or noise.shape[0] < 1 or noise.shape[1:] != x0.shape[1:]:
            raise ValueError(f"noise must be (D >= 1, {', '.join(map(str, x0.shape[1:]))}), got {tuple(noise.shape)}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        b, d = x0.shape[0], noise.shape[0]
        n = b * d
        step = n if max_batch is None else max_batch
        # Inputs draw-major: input j is image j % B under draw j // B.
        x_rep = x0.repeat(d, 1, 1, 1)
        eps = noise.to(x0.device, x0.dtype).repeat_interleave(b, dim=0)
        cond_rep = cond.repeat(d)
        tt = torch.full((n,), int(t), dtype=torch.long, device=x0.device)
        captured: list[Tensor] = []

        def hook(_m, _i, out):
            captured.append(out[0] if isinstance(out, tuple) else out)
            raise _StopForward

        handle = self.unet.up_blocks[block].register_forward_hook(hook)
        parts = []
        try:
            for s in range(0, n, step):
                captured.clear()
                x_t = self.add_noise(x_rep[s : s + step], eps[s : s + step], tt[s : s + step])
                try:
                    self.predict_noise(x_t, tt[s : s + step], cond_rep[s : s + step])
                except _StopForward:
                    pass
                parts.append(captured[0].float())
        finally:
            handle.remove()
        feats = torch.cat(parts)  # (D*B, F, h', w')
        return feats.view(d, b, *feats.shape[1:]).mean(0)


# ---------------------------------------------------------------------- the VAE alone
class LatentEncoder(nn.Module):
    """The frozen VAE encoder of an SD directory alone (for caching latents before training or
    scoring): ``encode`` gives exactly what `LatentDiffusion.encode` gives for the same VAE."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.vae.set_attn_processor(AttnProcessor2_0())

    @classmethod
    def from_base(cls, directory: str | Path) -> "LatentEncoder":
        """Load the ``vae/`` of a local diffusers SD directory (CPU, fp32); SDLayoutError if it is missing."""
        directory = Path(directory)
        _check_layout(directory, ("vae",), index=False)
        return cls(AutoencoderKL.from_pretrained(directory / "vae", low_cpu_mem_usage=False))

    def train(self, mode: bool = True) -> "LatentEncoder":
        """The VAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def latent_factor(self) -> int:
        return _latent_factor(self.vae)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> latents (B, C, H/f, W/f) float32 on the VAE's device
        (scaled posterior mean, see `LatentDiffusion.encode`)."""
        return _vae_encode(self.vae, images)


# ---------------------------------------------------------------------- helpers
def _latent_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_encode(vae: AutoencoderKL, images: Tensor) -> Tensor:
    """(mean of q(z | x) - shift_factor) * scaling_factor of uint8 images (B, 3, H, W) mapped to
    [-1, 1] -> float32 (B, C, H/f, W/f) on the VAE's device; H and W multiples of f."""
    if images.dtype != torch.uint8:
        raise TypeError(f"encode expects uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"encode expects images (B, 3, H, W), got shape {tuple(images.shape)}")
    f = _latent_factor(vae)
    h, w = images.shape[-2:]
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not a multiple of the VAE's downsampling factor {f}")
    p = next(vae.parameters())
    x = images.to(p.device, torch.float32).div_(127.5).sub_(1.0).to(p.dtype)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean.float()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * vae.config.scaling_factor


def _check_compatible(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, scheduler: DDPMScheduler
) -> None:
    """ValueError naming the values when the parts of an SD directory do not fit together."""
    problems = []
    uc = unet.config
    if uc.in_channels != vae.config.latent_channels:
        problems.append(f"unet in_channels {uc.in_channels} != vae latent_channels {vae.config.latent_channels}")
    if uc.out_channels != uc.in_channels:
        problems.append(f"unet out_channels {uc.out_channels} != in_channels {uc.in_channels} (not an eps-predictor)")
    hidden = text_encoder.config.hidden_size
    if uc.cross_attention_dim != hidden:
        problems.append(f"unet cross_attention_dim {uc.cross_attention_dim} != text encoder hidden_size {hidden}")
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        problems.append(f"scheduler prediction_type {prediction!r} is not 'epsilon' (only eps-prediction SD v1.x is supported)")
    if problems:
        raise ValueError("incompatible Stable Diffusion parts: " + "; ".join(problems))


def _load_parts(directory: Path, dtype: torch.dtype | None):
    """Load the five parts of an SD directory (layout already checked)."""
    unet = UNet2DConditionModel.from_pretrained(
        directory / "unet", low_cpu_mem_usage=False, torch_dtype=torch.float32 if dtype is None else dtype
    )
    vae = AutoencoderKL.from_pretrained(directory / "vae", low_cpu_mem_usage=False)
    text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
    sched_cfg = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    # Whatever sampler class the config names, the training math is DDPM with the checkpoint's betas.
    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    scheduler = DDPMScheduler(**{k: v for k, v in sched_cfg.items() if k in known})
    return unet, vae, text_encoder, tokenizer, scheduler, sched_cfg


def _read_meta(directory: Path) -> dict:
    meta_path = directory / _META
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} is not a gcmine model directory: {_META} is missing")
    return json.loads(meta_path.read_text())


def load_any_model(directory: str | Path) -> PixelDiffusion | LatentDiffusion:
    """Load a gcmine model directory by the kind in its ``gcmine_model.json``: "sd" ->
    `LatentDiffusion`, "pixel" (or no kind: directories written before kinds existed) ->
    `PixelDiffusion`. Both load on the CPU in fp32 (then `.to(device)`, `half_precision`)."""
    directory = Path(directory)
    kind = _read_meta(directory).get("kind", "pixel")
    if kind == "sd":
        return LatentDiffusion.load(directory)
    if kind == "pixel":
        return PixelDiffusion.load(directory)
    raise ValueError(f"{directory}: unknown gcmine model kind {kind!r} (expected 'pixel' or 'sd')")
