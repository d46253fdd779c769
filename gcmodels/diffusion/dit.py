"""DiT: a class-conditional diffusion transformer over VAE latents (no text).

`DiT` wraps a local diffusers ``DiTPipeline`` directory (``transformer/``, ``vae/``,
``scheduler/``; the transformer is saved as ``DiTTransformer2DModel`` or, on the hub, as the older
``Transformer2DModel`` with adaLN-zero):

- labels are classes of the checkpoint: each label maps to a class id, through ``model.class_map``
  (a CSV ``label,class_id``) or because the label is the id itself (``"207"``); the null label is
  the extra class embedding DiT was trained with for classifier-free guidance (id = the number of
  classes, 1000 for the ImageNet models, as ``DiTPipeline`` uses it);
- the schedule is the checkpoint's DDPM betas (linear 1e-4 - 0.02), eps prediction; the network
  also outputs a learned variance in extra channels (``out_channels = 2 x in_channels``), which
  gcmine ignores: its training loss is the eps MSE on the first channels, as DiT's simple loss;
- the sample size is fixed (positional embeddings of one grid): working images are square at the
  native size (256 px for DiT-XL-2-256); the settings default to it and other sizes are refused;
- features: the tokens output by ``transformer.transformer_blocks[block]`` on the patch grid.

Defaults of the family: square working images at the checkpoint's sample size, the middle block
for features, full fine-tuning (DiT-XL/2 has 675 M parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from torch import Tensor, nn

from gcmodels.diffusion.latent import (
    SCHEDULER,
    CheckpointInfo,
    LatentDiffusion,
    ModelLayoutError,
    Part,
    check_layout,
    ddpm_schedule,
    load_diffusers,
    read_json,
    safetensors_parameters,
    vae_factor,
)
from gcmodels.labels import LABEL_JOIN

__all__ = ["DiT", "class_ids_of", "validate_class_map"]


def validate_class_map(rows: Iterable[tuple[object, object]], num_classes: int) -> dict[str, int]:
    """(label, class id) pairs -> {label: id}, checked: non-empty labels, integer ids in
    0 .. num_classes - 1, each label once, each id for one label. ValueError naming the bad rows."""
    out: dict[str, int] = {}
    problems: list[str] = []
    used: dict[int, str] = {}
    for i, (label, raw) in enumerate(rows):
        label = str(label).strip()
        text = str(raw).strip()
        if not label:
            problems.append(f"row {i + 1}: empty label")
            continue
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
            problems.append(f"row {i + 1}: class_id {raw!r} of {label!r} is not an integer in 0..{num_classes - 1}")
            continue
        cid = int(text)
        if label in out:
            problems.append(f"row {i + 1}: label {label!r} is mapped twice")
        elif cid in used:
            problems.append(f"row {i + 1}: class {cid} is mapped to both {used[cid]!r} and {label!r}")
        else:
            out[label], used[cid] = cid, label
    if problems:
        raise ValueError(
            "bad class map: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    if not out:
        raise ValueError("bad class map: no rows")
    return out


def class_ids_of(labels: Sequence[str], num_classes: int, class_map: Mapping[str, int] | None) -> list[int]:
    """The class id of each label: from `class_map`, or the label read as an integer id. ValueError
    naming the labels that have none, or two labels sharing one class; a label set (multi-label
    images) is refused: a DiT conditions on one class at a time."""
    sets = [lab for lab in labels if LABEL_JOIN in lab]
    if sets:
        raise ValueError(
            f"a class-conditional DiT checkpoint conditions on one class per image, but images carry several labels "
            f"(e.g. {sets[0]!r}): give one label per image, or mine them with a text-conditioned model.base "
            "(Stable Diffusion, SDXL, SD3) or the embedded pixel model"
        )
    ids: list[int] = []
    missing: list[str] = []
    for lab in labels:
        if class_map is not None and lab in class_map:
            ids.append(int(class_map[lab]))
        elif class_map is None and lab.strip().isdigit() and int(lab) < num_classes:
            ids.append(int(lab))
        else:
            missing.append(lab)
    if missing:
        how = (
            "model.class_map does not map them"
            if class_map is not None
            else (f"they are not class ids in 0..{num_classes - 1}: set model.class_map to a CSV label,class_id")
        )
        raise ValueError(f"labels without a class of the DiT checkpoint: {missing[:5]!r} ({how})")
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise ValueError(f"labels share class ids {dup[:5]}: each label needs its own class")
    if any(not 0 <= c < num_classes for c in ids):
        raise ValueError(f"class ids {ids} outside 0..{num_classes - 1}")
    return ids


class DiT(LatentDiffusion):
    """A class-conditional latent DDPM of the DiT family (index 0 = the null class)."""

    family = "dit"
    title = "DiT"
    pipeline_class = "DiTPipeline"
    denoiser_part = "transformer"
    # the parts LatentDiffusion.__init__ sets by name (setattr), declared for the type checker
    transformer: DiTTransformer2DModel
    class_ids: Tensor  # a buffer (register_buffer in __init__)
    conditioning_kind = "class"
    block_kind = "transformer"
    block_name = "transformer block"
    PARTS: ClassVar[dict[str, Part]] = {"transformer": Part(), "vae": Part(), "scheduler": SCHEDULER}

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        scheduler,
        labels: Sequence[str],
        *,
        class_map: Mapping[str, int] | None = None,
        scheduler_config: dict | None = None,
        id2label: Mapping | None = None,
    ) -> None:
        tc = transformer.config
        num_classes = int(tc.num_embeds_ada_norm)
        ids = class_ids_of(list(labels), num_classes, class_map)
        sched_cfg = dict(scheduler_config if scheduler_config is not None else scheduler.config)
        sched_cfg.setdefault("_class_name", type(scheduler).__name__)
        prediction = sched_cfg.get("prediction_type", "epsilon")
        problems = []
        if tc.in_channels != vae.config.latent_channels:
            problems.append(
                f"transformer in_channels {tc.in_channels} != vae latent_channels {vae.config.latent_channels}"
            )
        if tc.out_channels not in (tc.in_channels, 2 * tc.in_channels):
            problems.append(
                f"transformer out_channels {tc.out_channels} is neither in_channels nor twice it (learned variance)"
            )
        if prediction != "epsilon":
            problems.append(f"scheduler prediction_type {prediction!r} is not 'epsilon'")
        if problems:
            raise ValueError("incompatible DiT parts: " + "; ".join(problems))
        super().__init__(
            transformer,
            vae,
            labels,
            alphas_cumprod=torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32),
            prediction=prediction,
            scheduler_config=sched_cfg,
        )
        # the embedding's own label dropout (for its CFG training) draws from the global RNG in train
        # mode; gcmine's trainer drops labels itself (seeded, resumable): turn it off, keep the null row
        from diffusers.models.embeddings import LabelEmbedding

        for module in transformer.modules():
            if isinstance(module, LabelEmbedding):
                if module.embedding_table.num_embeddings <= num_classes:
                    raise ValueError(f"the DiT transformer has no null class embedding (only {num_classes} classes)")
                module.dropout_prob = 0.0
        self.num_classes = num_classes
        self.class_map = dict(zip(self.labels, ids))
        self.id2label = {str(k): v for k, v in (id2label or {}).items()}
        # label index -> class id; index 0 (null) -> the extra embedding num_classes
        self.register_buffer("class_ids", torch.tensor([num_classes, *ids], dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def detect(cls, index: dict, directory: Path) -> bool:
        """A DiT transformer: DiTTransformer2DModel, or (DiTPipeline) the hub's Transformer2DModel
        with adaLN-zero and class embeddings."""
        part = index.get("transformer")
        if not isinstance(part, list) or part[0] is None:
            return False
        cfg_path = directory / "transformer" / "config.json"
        cfg = read_json(cfg_path) if cfg_path.is_file() else {}
        if "DiTTransformer2DModel" in (part[-1], cfg.get("_class_name")):
            return True
        return (
            index.get("_class_name") == "DiTPipeline"
            and cfg.get("norm_type") == "ada_norm_zero"
            and bool(cfg.get("num_embeds_ada_norm"))
        )

    @classmethod
    def inspect(cls, directory: Path, index: dict) -> CheckpointInfo:
        check_layout(directory, cls.PARTS, cls.title)
        cfg_path = directory / "transformer" / "config.json"
        cfg = read_json(cfg_path)
        layers, classes, size = cfg.get("num_layers"), cfg.get("num_embeds_ada_norm"), cfg.get("sample_size")
        for name, value in (("num_layers", layers), ("num_embeds_ada_norm", classes), ("sample_size", size)):
            if not isinstance(value, int) or value < 1:
                raise ModelLayoutError(f"{cfg_path}: {name} must be a positive integer, got {value!r}")
        assert isinstance(layers, int) and isinstance(size, int)  # checked just above
        native = int(size) * vae_factor(read_json(directory / "vae" / "config.json"))
        sched = read_json(directory / "scheduler" / "scheduler_config.json")
        names = index.get("id2label") or {}
        return CheckpointInfo(
            family=cls.family,
            title=cls.title,
            pipeline=str(index.get("_class_name")),
            directory=str(directory),
            prediction=sched.get("prediction_type", "epsilon"),
            feature_blocks=layers,
            block_name="transformer block",
            native_resolution=native,
            fixed_resolution=True,
            parameters=safetensors_parameters(directory / "transformer"),
            conditioning="class",
            num_classes=classes,
            class_names={int(k): str(v) for k, v in names.items()} or None,
            defaults={"data": {"resolution": native, "resize": "square"}, "rank": {"feature_block": layers // 2}},
        )

    @classmethod
    def from_base(
        cls,
        directory: str | Path,
        labels: Sequence[str],
        *,
        class_map: Mapping[str, int] | None = None,
        dtype: torch.dtype | None = None,
        **_ignored,
    ) -> DiT:
        """Load a local diffusers DiT directory for `labels` (CPU; the transformer in `dtype`, fp32 if
        None). Labels map to classes through `class_map` or are class ids; ValueError otherwise."""
        directory = Path(directory)
        check_layout(directory, cls.PARTS, cls.title)
        index = read_json(directory / "model_index.json")
        cfg = read_json(directory / "transformer" / "config.json")
        class_ids_of(list(labels), int(cfg.get("num_embeds_ada_norm") or 0), class_map)  # before loading weights
        sched_cfg = read_json(directory / "scheduler" / "scheduler_config.json")
        return cls(
            load_diffusers(DiTTransformer2DModel, directory / "transformer", torch.float32 if dtype is None else dtype),
            load_diffusers(AutoencoderKL, directory / "vae"),
            ddpm_schedule(sched_cfg),
            labels,
            class_map=class_map,
            scheduler_config=sched_cfg,
            id2label=index.get("id2label"),
        )

    def _index_extras(self) -> dict:
        """id2label of the checkpoint, with the mined labels naming their classes (DiTPipeline.get_label_ids)."""
        names = dict(self.id2label)
        for label, cid in self.class_map.items():
            names[str(cid)] = label
        return {"id2label": dict(sorted(names.items(), key=lambda kv: int(kv[0])))}

    def _meta(self) -> dict:
        return {"class_map": dict(self.class_map)}

    # ------------------------------------------------------------------ the network
    def _encode_conditioning(self) -> dict[str, Tensor]:
        return {}

    def _denoise(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        """eps under the classes of `cond` (0 = the null class); the learned-variance channels are dropped."""
        size = int(self.transformer.config.sample_size)
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"DiT takes latents of its fixed sample size {size}x{size} ({size * self.latent_factor} px square images), "
                f"got {x.shape[-2]}x{x.shape[-1]}: set data.resolution={size * self.latent_factor} and data.resize=square"
            )
        classes = self.class_ids.to(x.device)[cond.to(x.device)]
        out = self.transformer(x.to(self.dtype), timestep=timestep, class_labels=classes).sample
        return out[:, : x.shape[1]]

    def feature_blocks(self) -> Sequence[nn.Module]:
        return self.transformer.transformer_blocks

    def _feature_grid(self, output, x: Tensor) -> Tensor:
        """A block's tokens (B, N, D) -> (B, D, h / p, w / p)."""
        tokens = output[0] if isinstance(output, tuple) else output
        p = int(self.transformer.config.patch_size)
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
