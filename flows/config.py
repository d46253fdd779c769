"""Loading `Settings` from a YAML file and ``--set key=value`` overrides; printing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from gcmodels.config import MASK, ConfigError, Settings, may_hold_secret, secret_fields

__all__ = ["base_checkpoint", "describe_settings", "load_settings", "parse_override", "require_extras"]


def _shown(text: str) -> str:
    """An override as it may appear in a message: the value of a setting that may hold a secret
    masked ('storage.secret=**********')."""
    key, sep, _ = text.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    return repr(f"{key}{sep}{MASK}" if sep and may_hold_secret(parts) else text)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error without the snippet of the offending line PyYAML adds (it may hold a secret)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem}{where}"
    return type(err).__name__


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=500' -> (['train', 'steps'], 500); the value is read as YAML, except for a
    secret setting (storage.key, storage.secret), whose value is taken verbatim as text (a
    secret of digits stays the string given). Messages never show a value that may be a secret."""
    if "=" not in text:
        raise ConfigError(f"--set {_shown(text)}: expected key=value, e.g. --set train.steps=500")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {_shown(text)}: empty key part in {key!r}")
    if tuple(parts) in secret_fields():
        return parts, raw if raw else None
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {_shown(text)}: the value is not valid YAML ({_yaml_problem(err)})") from None
    return parts, value


def load_settings(config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Defaults, then the YAML file, then each override in order; validated once at the end."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded
    for text in overrides:
        parts, value = parse_override(text)
        node = values
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_shown(text)}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    model = values.get("model")
    base = model.get("base") if isinstance(model, dict) else None
    defaults = None
    if isinstance(base, str):  # the family's defaults need the family: read it now (exit 2 if unsupported)
        from gcmodels.config import checkpoint_defaults

        info = base_checkpoint(base)
        defaults = checkpoint_defaults(info.defaults, info.parameters)
    try:
        settings = Settings.from_dict(values, defaults)
    except ConfigError as err:
        where = f" (from {config_file})" if config_file else ""
        raise ConfigError(f"{err}{where}") from None
    require_extras(settings)
    return settings


def _needs(settings: Settings) -> list[tuple[str, str, str]]:
    """(setting, the package it needs, the extra of pyproject.toml that installs it) per setting
    that needs an optional package."""
    needs = []
    if settings.runtime.runner == "dask":
        needs.append(("runtime.runner=dask", "prefect_dask", "dask"))
    if settings.runtime.gpus is not None:
        needs.append((f"runtime.gpus={settings.runtime.gpus!r}", "prefect_dask", "dask"))
    if settings.embed.method == "clip":
        needs.append(("embed.method=clip", "transformers", "clip"))
    if settings.model.base is not None and settings.train.lora_rank > 0:
        needs.append((f"train.lora_rank={settings.train.lora_rank}", "peft", "checkpoints"))
    if settings.cluster.reduce == "umap":
        needs.append(("cluster.reduce=umap", "umap", "umap"))
    if settings.report.map_method == "umap":
        needs.append(("report.map_method=umap", "umap", "umap"))
    return needs


def require_extras(settings: Settings) -> None:
    """ConfigError naming the setting and the extra to install when a setting needs an optional
    package that is not installed (checked before any work; the default settings need none)."""
    import importlib.util

    for setting, package, extra in _needs(settings):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"{setting} needs {package}, which is not installed: pip install 'gcmine[{extra}]'")


def base_checkpoint(base: str):
    """What the checkpoint directory `base` is (`gcmodels.diffusion.inspect_base`), or ConfigError
    naming model.base and the problem (a missing part, an unsupported family)."""
    from gcmodels.diffusion import inspect_base

    try:
        return inspect_base(base)
    except ValueError as err:
        raise ConfigError(f"model.base: {err}") from None


def describe_settings(settings: Settings) -> str:
    """The effective settings as YAML, each field commented with its meaning and default; with
    model.base, a header says which family the checkpoint is and which defaults it changed."""
    lines = ["# gcmine effective configuration (values differing from the default are marked *)"]
    if settings.model.base is not None:
        from gcmodels.config import BASE_MODEL_DEFAULTS, checkpoint_defaults

        info = base_checkpoint(settings.model.base)
        lines.append(f"# model.base is {info.describe()}")
        changed = {
            **{f"{s}.{k}": v for s, d in BASE_MODEL_DEFAULTS.items() for k, v in d.items()},
            **{
                f"{s}.{k}": v
                for s, d in checkpoint_defaults(info.defaults, info.parameters).items()
                for k, v in d.items()
            },
        }
        lines.append("# its defaults (unless set): " + ", ".join(f"{k}={_plain(v)!r}" for k, v in changed.items()))
        lines.append(f"# fine-tuning: {fine_tuning_mode(settings.train.lora_rank, info.parameters)}")
    else:
        from gcmodels.config import PREDICTION_DEFAULTS

        own = PREDICTION_DEFAULTS.get(settings.model.prediction, {})
        if own:
            lines.append(
                f"# model.prediction={settings.model.prediction}: its defaults (unless set): "
                + ", ".join(f"{s}.{k}={_plain(v)!r}" for s, d in own.items() for k, v in d.items())
            )
    defaults = Settings()
    for section, _ in Settings.model_fields.items():
        model: BaseModel = getattr(settings, section)
        default_model = getattr(defaults, section)
        lines.append(f"{section}:")
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            default = getattr(default_model, name)
            if isinstance(value, SecretStr):  # set, and never shown
                value = MASK
            text = yaml.safe_dump(_plain(value), default_flow_style=True, allow_unicode=True).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            mark = "*" if value != default else " "
            desc = field.description or ""
            default_txt = "" if value == default else f" (default: {_plain(default)!r})"
            lines.append(f"  {name}: {text}  #{mark} {desc}{default_txt}")
    return "\n".join(lines)


def fine_tuning_mode(lora_rank: int, parameters: int | None) -> str:
    """'full ...' or 'LoRA rank r ...', with why when it is the size default."""
    from gcmodels.config import LORA_ABOVE_PARAMETERS
    from gcmodels.diffusion.latent import format_parameters

    size = format_parameters(parameters)
    if lora_rank:
        why = (
            " (the default above %.0f B parameters)" % (LORA_ABOVE_PARAMETERS / 1e9)
            if parameters and parameters > LORA_ABOVE_PARAMETERS
            else ""
        )
        return f"LoRA rank {lora_rank} on a denoiser of {size} parameters{why}"
    return f"full fine-tuning of a denoiser of {size} parameters"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
