"""What every checkpoint family shares: a frozen VAE, frozen conditioning parts, a trained denoiser.

`LatentDiffusion` is the base of the families read from a local diffusers directory (one module
each: `sd`, `sdxl`, `sd3`, `dit`). It adds to `ConditionalDiffusion`:

- ``encode`` / ``decode``: uint8 images <-> VAE latents, the MEAN of the encoder's distribution
  (deterministic), (z - shift_factor) * scaling_factor (0.18215 for SD v1.x, 0.13025 SDXL, SD3's
  16-channel VAE has a shift too). The paper samples the latent; the mean is the same point
  without the encoder's small noise, so scores do not depend on an extra draw;
- the conditioning of the L + 1 label indices (prompt embeddings, class ids), computed once by the
  frozen parts OUTSIDE autocast and inference mode and cached (recomputed only when a device or
  dtype changes): training under bf16 autocast and scoring then use the same fp32-computed states;
- training knobs on the denoiser: full fine-tuning, `enable_lora` (peft LoRA on the attention
  projections; `save` merges it), gradient checkpointing; `half_precision` casts the denoiser only;
- `save`: a diffusers directory that the family's pipeline class loads, plus ``gcmine_model.json``.

And the layout checks and loading helpers the family modules use: every missing part named at
once, weights exported only as a variant (``*.fp16.safetensors``) loaded as that variant, text
encoders always loaded in fp32 (transformers 5 keeps an fp16 export in fp16 otherwise, and `save`
would write it back in fp16).
"""

from __future__ import annotations

import inspect
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn

from gcmodels.diffusion.base import ConditionalDiffusion, validate_label_vocabulary
from gcmodels.prompts import render_prompt, validate_prompt_template

__all__ = [
    "DEFAULT_NULL_PROMPT",
    "DEFAULT_PROMPT_TEMPLATE",
    "LORA_TARGET_MODULES",
    "CheckpointInfo",
    "LatentDiffusion",
    "LatentEncoder",
    "ModelLayoutError",
    "Part",
    "check_layout",
    "format_parameters",
    "label_prompts",
    "load_text_encoder",
    "read_json",
    "safetensors_parameters",
    "weights_variant",
]

DEFAULT_PROMPT_TEMPLATE = "An image of {label}."
DEFAULT_NULL_PROMPT = ""
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
META = "gcmine_model.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",), ("spiece.model",))


class ModelLayoutError(ValueError):
    """A directory is not a complete diffusers directory of a family; the message names every missing part."""


# ---------------------------------------------------------------------- layout
class Part:
    """One folder of a diffusers directory: the config file it must hold (None: none), whether it
    must hold weights, whether it is a tokenizer, whether it may be absent (e.g. SD3's T5)."""

    def __init__(
        self,
        config: str | None = "config.json",
        weights: bool = True,
        *,
        tokenizer: bool = False,
        optional: bool = False,
    ) -> None:
        self.config, self.weights, self.tokenizer, self.optional = config, weights, tokenizer, optional


TOKENIZER = Part(None, False, tokenizer=True)
SCHEDULER = Part("scheduler_config.json", False)


def check_layout(directory: str | Path, parts: Mapping[str, Part], title: str, *, index: bool = True) -> None:
    """Raise ModelLayoutError naming `directory` and every missing one of `parts` (and of
    ``model_index.json`` if `index`) of a diffusers `title` directory. Loads nothing. A part marked
    optional may be absent, or null in model_index.json, but if its folder is there it must be complete."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise ModelLayoutError(f"{directory} is not a diffusers {title} directory: it {what}")
    missing: list[str] = []
    if index and not (directory / "model_index.json").is_file():
        missing.append("model_index.json")
    for name, part in parts.items():
        folder = directory / name
        if not folder.is_dir():
            if part.optional and not folder.exists():
                continue
            missing.append(f"{name}/ (a file, not a directory)" if folder.exists() else f"{name}/")
            continue
        lacks: list[str] = []
        if part.config is not None and not (folder / part.config).is_file():
            lacks.append(part.config)
        if part.weights and not any(p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()):
            lacks.append("weights *.safetensors or *.bin")
        if part.tokenizer and not any(all((folder / f).is_file() for f in files) for files in _TOKENIZER_FILES):
            lacks.append("vocab.json + merges.txt, tokenizer.json or spiece.model")
        if lacks:
            missing.append(f"{name}/ ({', '.join(lacks)})")
    if missing:
        raise ModelLayoutError(f"{directory} is not a diffusers {title} directory: missing {', '.join(missing)}")


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ModelLayoutError naming the file if it cannot be read."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ModelLayoutError(f"{path}: cannot read it as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise ModelLayoutError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def weights_variant(folder: Path) -> str | None:
    """The weights variant to load from `folder`: None when plain weights are there, else the
    variant every weights file is exported as (``model.fp16.safetensors`` -> "fp16")."""
    names = [p.name for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
    variants = set()
    for name in names:
        stem = name.rsplit(".", 1)[0].split("-0")[0]  # drop the suffix and a shard counter
        parts = stem.split(".")
        if len(parts) < 2:
            return None  # a plain weights file
        variants.add(parts[-1])
    return sorted(variants)[0] if len(variants) == 1 else None


def safetensors_parameters(folder: Path) -> int | None:
    """Parameters stored in `folder`'s safetensors files (of one variant), read from their headers
    only (no tensor is loaded); None when there are none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    variant = weights_variant(folder)
    if variant is None:
        files = [f for f in files if len(f.name.rsplit(".", 1)[0].split("-0")[0].split(".")) == 1] or files
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, meta in header.items():
            if key != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= int(d)
                total += n
    return total


def load_diffusers(cls, folder: Path, dtype: torch.dtype | None = torch.float32):
    """`cls.from_pretrained(folder)` in `dtype`, as the variant the weights were exported as."""
    return cls.from_pretrained(folder, low_cpu_mem_usage=False, torch_dtype=dtype, variant=weights_variant(folder))


def load_text_encoder(cls, folder: Path):
    """A frozen transformers text encoder from `folder`, in fp32 whatever dtype it was exported in
    (transformers 5 would keep an fp16 export in fp16), as its weights' variant."""
    return cls.from_pretrained(folder, dtype=torch.float32, variant=weights_variant(folder)).float()


# ---------------------------------------------------------------------- prompts
def label_prompts(labels: Sequence[str], template: str, null_prompt: str) -> tuple[str, ...]:
    """The L + 1 prompts of a text-conditioned family: index 0 the null prompt, index i + 1 the
    prompt of ``labels[i]`` under ONE template; ValueError when two labels (or a label and the null
    prompt) give the same prompt."""
    validate_prompt_template(template)
    if not isinstance(null_prompt, str):
        raise ValueError(f"the null prompt must be a string, got {null_prompt!r}")
    prompts = [render_prompt(template, lab) for lab in labels]
    seen: dict[str, str] = {}
    clashes = []
    for lab, prompt in zip(labels, prompts):
        if prompt == null_prompt:
            clashes.append(f"{lab!r} renders to the null prompt {prompt!r}")
        elif prompt in seen:
            clashes.append(f"{seen[prompt]!r} and {lab!r} both render to {prompt!r}")
        seen.setdefault(prompt, lab)
    if clashes:
        raise ValueError(f"labels must give distinct prompts: {'; '.join(clashes[:5])}")
    return (null_prompt, *prompts)


# ---------------------------------------------------------------------- the model
class LatentDiffusion(ConditionalDiffusion):
    """Base of the checkpoint families (see the module docstring).

    A family sets the class attributes, implements `_encode_conditioning` (the frozen parts ->
    a dict of tensors with the L + 1 label indices first), `_denoise`, `feature_blocks`,
    `from_base`, and the I/O hooks `_saved_parts`, `_index_extras`, `_meta`."""

    title: ClassVar[str] = ""  # what the family is called in messages and the run summary
    pipeline_class: ClassVar[str] = ""  # the diffusers pipeline that loads a saved directory
    denoiser_part: ClassVar[str] = "unet"  # folder of the trained network
    conditioning_kind: ClassVar[str] = "prompt"  # "prompt" (text) or "class" (class ids)
    PARTS: ClassVar[dict[str, Part]]  # set by every family: the parts of its diffusers directory

    def __init__(
        self,
        denoiser: nn.Module,
        vae: AutoencoderKL,
        labels: Sequence[str],
        *,
        alphas_cumprod: Tensor,
        prediction: str,
        scheduler_config: dict,
        frozen: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(validate_label_vocabulary(labels), alphas_cumprod, prediction)
        setattr(self, self.denoiser_part, denoiser)
        self.vae = vae
        self.frozen_parts: dict[str, Any] = dict(frozen or {})
        for name, part in self.frozen_parts.items():
            setattr(
                self, name, part
            )  # modules are registered (.to() moves them); tokenizers and None are plain attributes
        for module in (vae, *[p for p in self.frozen_parts.values() if isinstance(p, nn.Module)]):
            module.requires_grad_(False)
            module.eval()
        self._scheduler_config = dict(scheduler_config)
        if self.denoiser_part == "unet":  # transformers keep their own processors (SD3's joint attention)
            denoiser.set_attn_processor(AttnProcessor2_0())  # type: ignore[operator]  # a diffusers model method: nn.Module.__getattr__ types it Tensor | Module
        vae.set_attn_processor(AttnProcessor2_0())
        self._cond_cache: tuple[tuple, dict[str, Tensor]] | None = None
        self.text_encoder_calls = 0  # forwards of the frozen conditioning parts so far (the cache's cost)
        self._lora: dict | None = None

    # ------------------------------------------------------------------ what a family provides
    @classmethod
    def detect(cls, index: dict, directory: Path) -> bool:
        """Whether the diffusers directory with model_index.json `index` holds this family."""
        raise NotImplementedError

    @classmethod
    def inspect(cls, directory: Path, index: dict) -> CheckpointInfo:
        """What the directory holds (a `CheckpointInfo`), its layout checked."""
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def network(self) -> nn.Module:
        return getattr(self, self.denoiser_part)

    @property
    def latent_factor(self) -> int:
        """Image size / latent size: 2 ** (VAE levels - 1), 8 for the real checkpoints."""
        return _latent_factor(self.vae)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    # ------------------------------------------------------------------ modes, precision, training knobs
    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train/eval mode for the denoiser only: the VAE and the conditioning parts always stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        for part in self.frozen_parts.values():
            if isinstance(part, nn.Module):
                part.eval()
        return self

    def half_precision(self, dtype: torch.dtype = torch.float16) -> LatentDiffusion:
        """Cast the denoiser (only) to `dtype` (fp16/bf16 for scoring on a GPU); returns self."""
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"the denoiser's dtype must be float16, bfloat16 or float32, got {dtype}")
        self.network.to(dtype=dtype)
        return self

    def enable_lora(
        self, rank: int, alpha: float | None = None, *, generator: torch.Generator | None = None
    ) -> LatentDiffusion:
        """Freeze the denoiser and add a peft LoRA adapter of `rank` (scale alpha / rank, alpha = rank
        if None) on the attention projections to_q, to_k, to_v, to_out.0: only the adapter trains.
        B starts at zero, so the model's outputs are unchanged until it trains. The random A
        matrices are drawn from `generator` (peft draws from the global RNG: it is forked, so the
        caller's state is untouched and the same generator gives the same adapter). Returns self."""
        try:
            from peft import LoraConfig
        except ModuleNotFoundError:
            raise ValueError(
                "LoRA (train.lora_rank) needs peft, which is not installed: pip install 'gcmine[checkpoints]'"
            ) from None

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
        if self._lora is not None:
            raise ValueError(f"LoRA is already enabled ({self._lora}); enable it once")
        alpha = float(rank if alpha is None else alpha)
        self.network.requires_grad_(False)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float is used as is (scale alpha / r)
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGET_MODULES),
        )
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if hasattr(self.network, "add_adapter"):  # diffusers' PeftAdapterMixin (UNets, SD3)
                self.network.add_adapter(config)  # type: ignore[operator]  # a diffusers model method: nn.Module.__getattr__ types it Tensor | Module
            else:  # e.g. DiTTransformer2DModel: peft injects into any module
                from peft import inject_adapter_in_model

                inject_adapter_in_model(config, self.network, adapter_name="default")
        self._lora = {"rank": rank, "alpha": alpha}
        return self

    @property
    def lora(self) -> dict | None:
        """{"rank", "alpha"} when LoRA is on, else None."""
        return None if self._lora is None else dict(self._lora)

    # ------------------------------------------------------------------ conditioning
    def _encode_conditioning(self) -> dict[str, Tensor]:
        """The conditioning of the L + 1 label indices from the frozen parts (first dim L + 1)."""
        raise NotImplementedError

    def conditioning(self) -> dict[str, Tensor]:
        """The cached conditioning tensors of the L + 1 label indices, on the denoiser's device and
        dtype. Computed once by the frozen parts in fp32 outside any autocast (a first call from a
        bf16 training step computes the same states as one from scoring) and outside inference mode
        (usable by training); recomputed only when a device or dtype changed. Never part of a graph."""
        modules = [p for p in self.frozen_parts.values() if isinstance(p, nn.Module)]
        where = [(next(m.parameters()).device, next(m.parameters()).dtype) for m in modules]
        key = (tuple(where), self.device, self.dtype)
        if self._cond_cache is None or self._cond_cache[0] != key:
            device_types = {d.type for d, _ in where} or {"cpu"}
            with torch.inference_mode(False), torch.no_grad(), _no_autocast(device_types):
                values = self._encode_conditioning()
            self._cond_cache = (
                key,
                {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in values.items()},
            )
        return self._cond_cache[1]

    # ------------------------------------------------------------------ latents
    @property
    def latent_space(self) -> bool:
        return True

    def encode(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) -> latents (B, C, H/f, W/f) float32 on the denoiser's device.

        (mean of q(z | x) - shift_factor) * scaling_factor, images mapped to [-1, 1]; f =
        `latent_factor`; H and W must be multiples of f."""
        return vae_encode(self.vae, images).to(self.device)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> uint8 images (B, 3, h f, w f) on the latents' device: the VAE
        decoder applied to latents / scaling_factor (+ shift_factor), clipped to [-1, 1]; the
        inverse of `encode` up to the VAE's reconstruction error."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode expects latents (B, {self.latent_channels}, h, w), got shape {tuple(latents.shape)}"
            )
        p = next(self.vae.parameters())
        z = latents.detach().to(p.device, torch.float32) / self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        with torch.no_grad():
            x = self.vae.decode(z.to(p.dtype)).sample.float()
        return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8).to(latents.device)

    # ------------------------------------------------------------------ I/O
    def _plain_network(self) -> nn.Module:
        """The denoiser without peft wrappers: itself without LoRA, else one whose LoRA targets hold
        W + delta (built on the meta device and filled by assignment: only the merged layers are new)."""
        if self._lora is None:
            return self.network
        from peft.tuners.tuners_utils import BaseTunerLayer

        state: dict[str, Tensor] = {}
        for name, module in self.network.named_modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
                weight = cast(Tensor, base.weight).detach()  # the LoRA targets are Linear layers
                for adapter in module.active_adapters:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)  # type: ignore[attr-defined]  # on peft's LoRA layers
                state[f"{name}.weight"] = weight
                if base.bias is not None:
                    state[f"{name}.bias"] = cast(Tensor, base.bias).detach()
        for key, value in self.network.state_dict().items():
            if "lora_" in key:
                continue
            state.setdefault(key.replace(".base_layer.", "."), value)
        with torch.device("meta"):
            plain = type(self.network).from_config(self.network.config)  # type: ignore[attr-defined]  # diffusers' ConfigMixin
        plain.load_state_dict(state, strict=True, assign=True)
        return plain

    def _index_extras(self) -> dict:
        """Extra entries of model_index.json (pipeline options) besides the parts."""
        return {}

    def _meta(self) -> dict:
        """What `load` needs besides the labels (prompt template, class ids, ...)."""
        return {}

    def save(self, directory: str | Path) -> None:
        """Write a diffusers directory that `pipeline_class` loads (``model_index.json``, the trained
        denoiser, the VAE, the frozen parts, the scheduler config as the checkpoint had it) plus
        ``gcmine_model.json`` (kind, labels, conditioning options).

        With LoRA on, the saved denoiser is a plain one with the adapter MERGED into its weights
        (W + scale B A); the model in memory keeps its separate adapter. `load` thus returns a
        full-weight model whose outputs equal this one's up to float rounding."""
        import diffusers

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._plain_network().save_pretrained(directory / self.denoiser_part)  # type: ignore[operator]  # a diffusers model method: nn.Module.__getattr__ types it Tensor | Module
        self.vae.save_pretrained(directory / "vae")
        index: dict[str, Any] = {"_class_name": self.pipeline_class, "_diffusers_version": diffusers.__version__}
        index[self.denoiser_part] = ["diffusers", type(self.network).__name__]
        index["vae"] = ["diffusers", "AutoencoderKL"]
        for name, part in self.frozen_parts.items():
            if part is None:
                index[name] = [None, None]
                continue
            part.save_pretrained(directory / name)
            index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
        sched_dir = directory / "scheduler"
        sched_dir.mkdir(exist_ok=True)
        (sched_dir / "scheduler_config.json").write_text(json.dumps(self._scheduler_config, indent=2))
        index["scheduler"] = ["diffusers", self._scheduler_config["_class_name"]]
        index.update(self._index_extras())
        (directory / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2))
        meta = {"kind": self.family, "labels": list(self.conditions), **self._meta()}
        (directory / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def from_base(cls, directory: str | Path, labels: Sequence[str], **options) -> LatentDiffusion:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path, *, dtype: torch.dtype | None = None) -> LatentDiffusion:
        """Read back a directory written by `save` (CPU; the denoiser in `dtype`, fp32 if None)."""
        directory = Path(directory)
        meta = read_meta(directory)
        if meta.get("kind") != cls.family:
            raise ValueError(f"{directory} holds a gcmine model of kind {meta.get('kind')!r}, not {cls.family!r}")
        options = {k: v for k, v in meta.items() if k not in ("kind", "labels")}
        return cls.from_base(directory, meta["labels"], dtype=dtype, **options)


# ---------------------------------------------------------------------- the VAE alone
class LatentEncoder(nn.Module):
    """The frozen VAE encoder of a checkpoint alone (for caching latents before training or
    scoring): ``encode`` gives exactly what `LatentDiffusion.encode` gives for the same VAE."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.vae.set_attn_processor(AttnProcessor2_0())

    @classmethod
    def from_base(cls, directory: str | Path) -> LatentEncoder:
        """Load the ``vae/`` of a local diffusers directory (CPU, fp32); ModelLayoutError if it is missing."""
        directory = Path(directory)
        check_layout(directory, {"vae": Part()}, "model", index=False)
        return cls(load_diffusers(AutoencoderKL, directory / "vae"))

    def train(self, mode: bool = True) -> LatentEncoder:
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
        return vae_encode(self.vae, images)


# ---------------------------------------------------------------------- helpers
def _latent_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_encode(vae: AutoencoderKL, images: Tensor) -> Tensor:
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


def read_meta(directory: Path) -> dict:
    meta_path = Path(directory) / META
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} is not a gcmine model directory: {META} is missing")
    return json.loads(meta_path.read_text())


class _no_autocast:
    """Autocast off on every device type of `types` (a no-op where none is active)."""

    def __init__(self, types: set[str]) -> None:
        self._ctx = [torch.autocast(t, enabled=False) for t in sorted(types | {"cpu"})]

    def __enter__(self):
        for c in self._ctx:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self._ctx):
            c.__exit__(*exc)
        return False


# ---------------------------------------------------------------------- what a checkpoint is, before loading it
@dataclass(frozen=True)
class CheckpointInfo:
    """What the family module reads from a checkpoint directory's JSON files (and its weights'
    headers) before anything is loaded: enough to validate the settings and pick defaults."""

    family: str  # registry key ("sd", "sdxl", "sd3", "dit")
    title: str  # e.g. "Stable Diffusion 1.x/2.x"
    pipeline: str  # model_index.json's _class_name
    directory: str
    prediction: str  # epsilon | v_prediction | flow_matching
    feature_blocks: int  # blocks rank.feature_block indexes
    block_name: str  # "decoder block" (UNets) or "transformer block"
    native_resolution: int  # pixels per side the checkpoint was trained at (sample_size x latent factor)
    fixed_resolution: bool  # images must be brought to native_resolution (DiT)
    parameters: int | None  # of the denoiser, from its safetensors headers (None: not readable)
    conditioning: str  # "prompt" or "class"
    num_classes: int | None = None  # class-conditional models: the classes (the null class is num_classes)
    class_names: dict[int, str] | None = None  # class id -> name when the checkpoint names them (DiT's id2label)
    defaults: dict = field(default_factory=dict)  # settings this family changes for this checkpoint
    notes: tuple[str, ...] = ()  # facts worth logging (an absent optional text encoder, ...)

    def describe(self) -> str:
        size = f", {format_parameters(self.parameters)} parameters" if self.parameters else ""
        return f"{self.title} ({self.pipeline}, {self.prediction}{size})"


def format_parameters(n: int | None) -> str:
    """2567500000 -> '2.57 B', 859500000 -> '860 M', 28384 -> '28.4 K'."""
    if not n:
        return "an unknown number of"
    for scale, unit, digits in ((1e9, "B", 2), (1e6, "M", 0), (1e3, "K", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)


def ddpm_schedule(sched_cfg: dict):
    """A DDPMScheduler with the betas of a checkpoint's scheduler config, whatever sampler class it
    names (the training math is DDPM with the checkpoint's betas)."""
    from diffusers import DDPMScheduler

    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    return DDPMScheduler(**{k: v for k, v in sched_cfg.items() if k in known})


def unet_decoder_blocks(config_path: Path) -> int:
    """Decoder blocks (``up_block_types``) of a UNet config: the valid range of
    ``rank.feature_block`` is ``-n .. n - 1``. ModelLayoutError naming the file if it cannot tell."""
    try:
        blocks = json.loads(Path(config_path).read_text())["up_block_types"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLayoutError(
            f"{config_path}: cannot read the UNet's up_block_types ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(blocks, list) or not blocks:
        raise ModelLayoutError(f"{config_path}: up_block_types must be a non-empty list, got {blocks!r}")
    return len(blocks)


def vae_factor(vae_config: dict) -> int:
    return 2 ** (len(vae_config.get("block_out_channels", [0, 0, 0, 0])) - 1)
