"""Checks made before any work: run locations that point nowhere or into the code, and inputs
that do not exist.

A deployment's parameters are filled in from environment variables when `prefect deploy` runs
(`{{ $GCMINE_IMAGES }}`, ...); Prefect fills an unset variable with '' and only warns. A run then
starts in the worker's working directory, the code checkout (GCMINE_REPO), so an empty `images`
would mine the checkout itself and an empty `out` would write every artifact into it. These
checks refuse such a run with one line naming the variable that was probably unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec

from gcmine.tasks.infra.errors import InputError, StorageError
from gcmine.tasks.infra.storage import open_fs, with_retries
from gcmodels.config import ConfigError

__all__ = ["check_config_path", "check_location", "code_checkout", "require_exists"]

# The code checkout: the directory holding flows/ and tasks/ (None for an installed package).
_ROOT = Path(__file__).resolve().parents[2]  # tasks/infra/preflight.py -> the checkout
# Inside the checkout only its git-ignored runs/ folder (the CLI's default place for run roots
# and demo datasets) may hold images and run roots.
_DATA_FOLDER = "runs"


def code_checkout() -> Path | None:
    """The repository checkout gcmine runs from (it holds flows/), or None when installed."""
    return _ROOT if (_ROOT / "flows").is_dir() and (_ROOT / "tasks").is_dir() else None


def _unset(param: str, variable: str) -> str:
    """What to do about a parameter that came from an unset variable."""
    return (
        f"{variable} was probably unset when `prefect deploy` ran (Prefect fills an unset {{{{ ${variable} }}}} "
        f"with ''); export {variable} and deploy again, or pass {param}=... to the run"
    )


def _local_path(value: str) -> Path | None:
    """The absolute local path `value` names (relative to the working directory), None for a remote URI."""
    if fsspec.utils.get_protocol(value) not in ("file", "local"):
        return None
    return Path(os.path.abspath(value.removeprefix("file://")))


def check_location(param: str, value: str | None, variable: str, *, deployment: bool = True) -> None:
    """Refuse a run location (`param`: images, out, uri) that is empty, `.`, an unfilled
    `{{ $VAR }}` template or - for a deployment run - inside the code checkout (outside its
    runs/ folder); ConfigError naming `variable`, the environment variable it came from."""
    text = "" if value is None else str(value)
    if "{{" in text:
        raise ConfigError(f"parameter {param}={text!r} was never filled in: {_unset(param, variable)}")
    if not text.strip() or text.strip() in (".", "./", "file://", "file://."):
        raise ConfigError(f"{param}={text!r} names no location: {_unset(param, variable)}")
    path, root = _local_path(text), code_checkout()
    if not deployment or path is None or root is None:
        return
    if path == root or root in path.parents:
        rel = path.relative_to(root)
        if rel.parts[:1] == (_DATA_FOLDER,) and len(rel.parts) > 1:
            return
        raise ConfigError(
            f"{param}={text!r} is {path}, inside the code checkout {root} (runs start there): {variable} was probably "
            f"unset or relative when `prefect deploy` ran; set it to a location outside the checkout (an absolute "
            f"path or an s3:// URI) and deploy again, or pass {param}=... to the run"
        )


def check_config_path(value: str | None, variable: str) -> None:
    """Refuse a settings file parameter that is empty, '.' or an unfilled template (None: the
    defaults), and name the working directory a relative path that does not exist was read from."""
    if value is None:
        return
    text = str(value)
    if "{{" in text:
        raise ConfigError(f"parameter config={text!r} was never filled in: {_unset('config', variable)}")
    if not text.strip() or text.strip() in (".", "./"):
        raise ConfigError(f"config={text!r} names no settings file: {_unset('config', variable)}")
    path = Path(text)
    if not path.is_file():
        where = (
            "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()}: the checkout GCMINE_REPO)"
        )
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"config file {text} {what}{where}; set {variable} to a gcmine settings file and deploy again"
        )


def require_exists(uri: str, what: str, storage_options: dict | None = None) -> None:
    """InputError `{what} {uri} does not exist` unless `uri` (local or remote) exists: checked
    before a run starts, so a typo costs one line and no Prefect server start."""
    fs, path = open_fs(uri, storage_options)
    try:
        found = with_retries(fs, f"checking {what} {uri}", fs.exists, path)
    except PermissionError as err:
        raise StorageError(
            err.errno or 0, f"{what} {uri} cannot be read with the configured credentials: {err}"
        ) from None
    if not found:
        raise InputError(f"{what} {uri} does not exist")
