"""Which family a checkpoint directory is, read from its JSON files before anything is loaded.

A family is one module of this package defining a `LatentDiffusion` subclass with a `family`
key: it is found here by discovery, so adding a family is adding one module. Each family says
whether a directory is one of its own (`detect`, from ``model_index.json`` and the component
configs) and what it is (`inspect` -> `CheckpointInfo`, after checking its layout).

Models gcmine must not mine with are refused with the reason: guidance-distilled models have no
trained unconditional branch, and typicality is the difference between the conditional and the
unconditional prediction.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path

from gcmodels.diffusion.base import ConditionalDiffusion
from gcmodels.diffusion.latent import (
    CheckpointInfo,
    LatentDiffusion,
    ModelLayoutError,
    check_layout,
    read_json,
    read_meta,
)

__all__ = [
    "UnsupportedModel",
    "families",
    "inspect_base",
    "load_any_model",
    "load_base",
    "supported_families",
    "unavailable_families",
]

_NOT_FAMILIES = {"base", "families", "latent", "parametrisation", "pixel"}

# model_index.json _class_name -> why gcmine refuses it (typicality needs a trained null branch)
REFUSED = {
    "FluxPipeline": "Flux (dev, schnell) is guidance- or step-distilled: it was not trained with an unconditional "
    "(null-prompt) branch, and typicality is the gap between the conditional and the unconditional prediction",
    "FluxKontextPipeline": "Flux Kontext is guidance-distilled: no trained unconditional branch",
    "LatentConsistencyModelPipeline": "a latent consistency model is guidance-distilled (w embedded in the UNet): "
    "no trained unconditional branch",
}


class UnsupportedModel(ModelLayoutError):
    """The directory is a diffusers model of a family gcmine cannot mine with (the message says why)."""


_FAMILIES: dict[str, type[LatentDiffusion]] | None = None
# family modules that could not be imported: module name -> the missing package
_UNAVAILABLE: dict[str, str] = {}
#: the optional packages of family modules, and the extra that installs them
OPTIONAL_PACKAGES = {"transformers": "checkpoints", "peft": "checkpoints"}


def families() -> dict[str, type[LatentDiffusion]]:
    """family key -> class, every `LatentDiffusion` subclass with a `family` defined in a module of
    this package (imported on first use)."""
    global _FAMILIES
    if _FAMILIES is None:
        import gcmodels.diffusion as package

        found: dict[str, type[LatentDiffusion]] = {}
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name in _NOT_FAMILIES or info.name.startswith("_"):
                continue
            try:
                module = importlib.import_module(f"{package.__name__}.{info.name}")
            except ModuleNotFoundError as err:
                missing = (err.name or "").split(".")[0]
                if missing not in OPTIONAL_PACKAGES:
                    raise
                _UNAVAILABLE[info.name] = missing  # e.g. the SD families without transformers
                continue
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, LatentDiffusion)
                    and obj.family
                    and obj.__module__ == module.__name__
                ):
                    found[obj.family] = obj
        _FAMILIES = found
    return _FAMILIES


def supported_families() -> str:
    """The supported families as one line, for messages."""
    return "; ".join(f"{cls.title} ({cls.pipeline_class})" for cls in families().values())


def _refuse(directory: Path, found: str, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{directory} is a {found}: {why}. gcmine mines with: {supported_families()}")


def inspect_base(directory: str | Path) -> CheckpointInfo:
    """What the checkpoint `directory` is (family, blocks, native resolution, parameters, defaults),
    read from its JSON files and weights' headers only. ModelLayoutError naming every missing part
    or unreadable file; UnsupportedModel naming the family found and the supported ones."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise ModelLayoutError(f"{directory} is not a diffusers model directory: it {what}")
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        # no index to tell the family by: name what a UNet (or transformer) checkpoint lacks
        candidates = [c for c in families().values() if (directory / c.denoiser_part).exists()] or list(
            families().values()
        )
        check_layout(directory, candidates[0].PARTS, candidates[0].title)
        raise ModelLayoutError(f"{directory} is not a diffusers model directory: missing model_index.json")
    index = read_json(index_path)
    name = str(index.get("_class_name", "an unnamed pipeline"))
    if name in REFUSED:
        raise _refuse(directory, name, REFUSED[name])
    for part in ("unet", "transformer"):
        cfg_path = directory / part / "config.json"
        if index.get(part) is not None and cfg_path.is_file():
            cfg = read_json(cfg_path)
            if cfg.get("time_cond_proj_dim") is not None:
                raise _refuse(
                    directory,
                    f"{name} whose {part} embeds the guidance scale (time_cond_proj_dim={cfg['time_cond_proj_dim']})",
                    "a guidance-distilled model has no trained unconditional branch",
                )
            if cfg.get("guidance_embeds"):
                raise _refuse(
                    directory,
                    f"{name} whose {part} embeds the guidance scale (guidance_embeds)",
                    "a guidance-distilled model has no trained unconditional branch",
                )
    for cls in families().values():
        if cls.detect(index, directory):
            return cls.inspect(directory, index)
    parts = sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None)
    if _UNAVAILABLE:
        raise UnsupportedModel(
            f"{directory} is a {name} (parts: {', '.join(parts) or 'none'}): {unavailable_families()}"
        )
    raise _refuse(directory, f"{name} (parts: {', '.join(parts) or 'none'})", "not a family gcmine supports")


def unavailable_families() -> str:
    """Why some families cannot be used here (a package they import is missing), as one line, or ''."""
    families()
    if not _UNAVAILABLE:
        return ""
    packages = sorted(set(_UNAVAILABLE.values()))
    extras = sorted({OPTIONAL_PACKAGES[p] for p in packages})
    return (
        f"the families {', '.join(sorted(_UNAVAILABLE))} need {' and '.join(packages)}, which is not installed: "
        f"pip install 'gcmine[{','.join(extras)}]'"
    )


def load_base(directory: str | Path, labels: Sequence[str], **options) -> LatentDiffusion:
    """Load the checkpoint `directory` for `labels` as its family (`inspect_base` first: nothing
    is loaded from a directory that is incomplete or of an unsupported family). `options`: the
    family's conditioning options (prompt_template, null_prompt, class_map) and dtype."""
    info = inspect_base(directory)
    return families()[info.family].from_base(directory, labels, **options)


def load_any_model(directory: str | Path) -> ConditionalDiffusion:
    """Load a gcmine model directory by the kind in its ``gcmine_model.json``: "pixel" (or no kind:
    directories written before kinds existed) -> `PixelDiffusion`, a family key -> that family.
    CPU, fp32 (then `.to(device)`, `half_precision`)."""
    from gcmodels.diffusion.pixel import PixelDiffusion

    directory = Path(directory)
    kind = read_meta(directory).get("kind", "pixel")
    if kind == "pixel":
        return PixelDiffusion.load(directory)
    known = families()
    if kind not in known:
        raise ValueError(
            f"{directory}: unknown gcmine model kind {kind!r} (expected 'pixel' or one of {sorted(known)})"
        )
    return known[kind].load(directory)
