"""Device and thread settings for torch (explicit, never implicit global state in model code)."""

from __future__ import annotations

import torch

__all__ = ["configure_torch", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"runtime.device: {name!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device is {name!r} but CUDA is not available on this machine")
    return device


def configure_torch(threads: int | None) -> None:
    """CPU threads (None = leave torch's default) and denormal flushing, which keeps small CPU
    models from slowing down as their weights shrink."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
