"""Device and thread settings for torch (explicit, never implicit global state in model code)."""

from __future__ import annotations

from typing import Literal

import torch

from gcmodels.config import ConfigError, RuntimeConfig

__all__ = [
    "PRECISION_DTYPES",
    "check_device",
    "configure_torch",
    "data_parallel_devices",
    "gpu_indices",
    "resolve_device",
    "resolve_precision",
    "task_threads",
]

# What a resolved precision means as a torch dtype (autocast in training, the UNet's weights in scoring).
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


OVERLAP_THREADS = 2  # runtime.workers=auto on CUDA: one shard computes, the other is read or written


def task_threads(runtime: RuntimeConfig) -> int:
    """Threads of the thread task runner: `runtime.workers`, or for 'auto' 2 when the device is
    CUDA (score and rank hold the card only while they compute, so a second shard's reading and the
    previous one's writing run beside the compute, and the card still computes one shard at a
    time: at most one shard read ahead), else 1 (on the CPU the compute itself takes the cores)."""
    if runtime.workers != "auto":
        return int(runtime.workers)
    return OVERLAP_THREADS if resolve_device(runtime.device).type == "cuda" else 1


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"runtime.device: {name!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device is {name!r} but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"runtime.device is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"runtime.device: {name!r} is not a device gcmine runs on (auto, cpu, cuda, cuda:N)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"runtime.device is {name!r} but MPS is not available on this machine")
    return device


def check_device(runtime: RuntimeConfig) -> torch.device:
    """`runtime.device` and `runtime.precision` (a RuntimeConfig) resolved and checked to exist on
    this machine, before any work: a ConfigError naming the setting otherwise."""
    device = resolve_device(runtime.device)
    resolve_precision(runtime.precision, device)
    return device


def gpu_indices(gpus: Literal["all"] | int | list[int], count: int) -> list[int]:
    """The CUDA indices `runtime.gpus` names on a node with `count` visible CUDA devices: 'all'
    -> every one, a count n -> the first n, a list -> itself; a ConfigError naming the setting when
    the node has fewer."""
    have = f"this machine has {count} CUDA device(s)" + (f" (0 to {count - 1})" if count else "")
    if isinstance(gpus, str):  # 'all'
        if not count:
            raise ConfigError(f"runtime.gpus is 'all' but {have}")
        return list(range(count))
    if isinstance(gpus, int):
        if gpus > count:
            raise ConfigError(f"runtime.gpus is {gpus} but {have}")
        return list(range(gpus))
    missing = [i for i in gpus if i >= count]
    if missing:
        raise ConfigError(f"runtime.gpus lists {missing} but {have}")
    return list(gpus)


def data_parallel_devices(processes: int, device: torch.device) -> list[torch.device]:
    """The devices of `processes` data-parallel training processes (`train.processes`) from
    `runtime.device` resolved to `device`: on CUDA one card each, cuda:i to cuda:i + processes - 1
    from the device's index i (0 for 'cuda'), which must all exist; on the CPU the CPU for each
    (gloo; for testing and CPU-only machines: the processes share its cores). A ConfigError naming
    both settings otherwise."""
    if processes < 1:
        raise ConfigError(f"train.processes must be >= 1, got {processes}")
    if processes == 1:
        return [device]
    if device.type == "cuda":
        first, count = device.index or 0, torch.cuda.device_count()
        if first + processes > count:
            raise ConfigError(
                f"train.processes={processes} needs {processes} CUDA devices from runtime.device (cuda:{first} to "
                f"cuda:{first + processes - 1}), but this machine has {count} (cuda:0 to cuda:{count - 1}); "
                "lower train.processes"
            )
        return [torch.device("cuda", first + r) for r in range(processes)]
    if device.type == "cpu":
        return [device] * processes
    raise ConfigError(
        f"train.processes={processes} runs one process per CUDA device (or on the CPU), not on {device} "
        "(runtime.device); set train.processes=1"
    )


def configure_torch(threads: int | None) -> None:
    """CPU threads (None = leave torch's default) and denormal flushing, which keeps small CPU
    models from slowing down as their weights shrink."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def resolve_precision(setting: str, device: torch.device) -> str:
    """The training / scoring precision of `runtime.precision` on `device`: 'auto' -> bf16 on a
    CUDA device with native bf16 (compute capability 8.0+), else fp16 on CUDA, fp32 on CPU; 'fp32' anywhere; 'bf16' / 'fp16'
    need a CUDA device."""
    if setting != "auto" and setting not in PRECISION_DTYPES:
        raise ConfigError(f"runtime.precision must be auto, fp32, bf16 or fp16, got {setting!r}")
    cuda = device.type == "cuda"
    if setting == "auto":
        if not cuda:
            return "fp32"
        with torch.cuda.device(device):  # is_bf16_supported asks about the current device
            # native bf16 only (Ampere and later): emulated bf16 is slower than fp16
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if setting != "fp32" and not cuda:
        raise ConfigError(
            f"runtime.precision={setting!r} needs a CUDA device, but runtime.device resolved to {device}; "
            "use runtime.precision=auto or fp32 on a CPU"
        )
    return setting
