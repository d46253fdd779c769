"""Loading the fine-tuned model once per process (per worker), keyed by its fingerprint."""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from gcmine.tasks.infra.artifacts import MODEL
from gcmine.tasks.infra.errors import DamagedArtifact
from gcmine.tasks.infra.gpu import gpu_slot
from gcmine.tasks.infra.integrity import CHUNK, local_records_damage
from gcmine.tasks.infra.storage import RunStore, damaged_hint, is_local
from gcmodels.diffusion import ConditionalDiffusion, LatentDiffusion, load_any_model
from gcmodels.runtime import PRECISION_DTYPES, configure_torch, resolve_device, resolve_precision

COMPLETE = "_COMPLETE.json"  # written last: a model folder without it is incomplete
TRAINING_SET = "training_set.parquet"  # (image_id, label) the model was trained on

_cache: dict[tuple[str, str, str, str], ConditionalDiffusion] = {}
_lock = threading.Lock()
_compiled: weakref.WeakKeyDictionary[ConditionalDiffusion, ConditionalDiffusion] = weakref.WeakKeyDictionary()


def model_fingerprint(directory: Path) -> str:
    """SHA-256 over the model folder's files (names and bytes; not the marker), first 16 hex
    digits; each file is read in chunks (a multi-GB weight file never sits in memory whole)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE):
        h.update(path.relative_to(directory).as_posix().encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
    return h.hexdigest()[:16]


@contextmanager
def model_stage(
    out: str, fingerprint: str, runtime, storage_options: dict | None, *, hold_gpu: bool = True
) -> Iterator[tuple[RunStore, ConditionalDiffusion, torch.device]]:
    """What every model stage runs in: torch configured per `runtime`, the GPU slot of the chosen
    device held (see tasks/infra/gpu.py; nothing on CPU), the run's store, and the model of
    `fingerprint` on the device (loaded from storage once per worker process, never passed in).
    `hold_gpu=False`: the stage takes `gpu_slot` itself around its compute only, so that its
    reading and writing overlap another shard's compute (runtime.workers > 1)."""
    configure_torch(runtime.threads)
    device = resolve_device(runtime.device)
    with gpu_slot(device, runtime) if hold_gpu else nullcontext():
        store = RunStore(out, storage_options)
        yield store, load_model(store, fingerprint, device, resolve_precision(runtime.precision, device)), device


def load_model(
    store: RunStore, fingerprint: str, device: torch.device, precision: str = "fp32"
) -> ConditionalDiffusion:
    """The run's model in eval mode on `device`; loaded from storage once per fingerprint. A
    checkpoint's denoiser (UNet or transformer) runs in `precision` (bf16 / fp16 on CUDA: half the memory, tensor
    cores; the estimator keeps its loss math in fp32); the small pixel model stays fp32."""
    key = (store.root_uri, fingerprint, str(device), precision)
    with _lock:
        if key not in _cache:
            if not store.exists(f"{MODEL}/{COMPLETE}"):
                raise FileNotFoundError(
                    f"model folder {store.uri(MODEL)} is incomplete ({COMPLETE} missing): rerun the run"
                )
            found = store.read_json(f"{MODEL}/{COMPLETE}")["fingerprint"]
            if found != fingerprint:
                raise RuntimeError(
                    f"model folder {store.uri(MODEL)} holds model {found}, not {fingerprint}: another run replaced it"
                )
            with store.local_copy(MODEL) as directory:  # a download (object stores) is removed once loaded
                if not is_local(store.fs):  # the bytes as they arrived, against the sizes and hashes of the marker
                    damage = local_records_damage(directory, store.read_json(f"{MODEL}/{COMPLETE}").get("files") or {})
                    if damage is not None:
                        raise DamagedArtifact(
                            0, f"model folder {store.uri(MODEL)} is damaged ({damage}); {damaged_hint(MODEL + '/')}"
                        )
                model = load_any_model(directory).to(device).eval()
            if precision != "fp32" and isinstance(model, LatentDiffusion):
                model.half_precision(PRECISION_DTYPES[precision])
            _cache.clear()  # one model per process at a time: a new run replaces the old one
            _cache[key] = model
        return _cache[key]


def scoring_model(model: ConditionalDiffusion, runtime) -> ConditionalDiffusion:
    """The model scoring runs: with `runtime.compile`, a view whose denoiser is compiled
    (`ConditionalDiffusion.compiled`, made once per loaded model and worker process, with cuDNN's
    autotuner on CUDA); else the model itself. The loaded model stays eager for the other stages."""
    if not runtime.compile:
        return model
    with _lock:
        if model not in _compiled:
            if model.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            _compiled[model] = model.compiled()
        return _compiled[model]


_base_cache: dict[tuple, ConditionalDiffusion] = {}


def load_base_model(
    model_config, labels: list[str], class_map: dict[str, int] | None, device: torch.device, precision: str = "fp32"
) -> ConditionalDiffusion:
    """The checkpoint `model_config.base` before fine-tuning, conditioned on `labels` as the
    fine-tuned model is (the same prompts or class ids), in eval mode on `device` (its denoiser in
    `precision`); loaded once per process (score.compare_base)."""
    key = (
        str(model_config.base),
        tuple(labels),
        model_config.prompt_template,
        model_config.null_prompt,
        tuple(sorted((class_map or {}).items())),
        str(device),
        precision,
    )
    with _lock:
        if key not in _base_cache:
            from gcmodels.diffusion import load_base

            model = load_base(
                model_config.base,
                labels,
                prompt_template=model_config.prompt_template,
                null_prompt=model_config.null_prompt,
                class_map=class_map,
            )
            model = model.to(device).eval()
            if precision != "fp32" and isinstance(model, LatentDiffusion):
                model.half_precision(PRECISION_DTYPES[precision])
            _base_cache[key] = model
        return _base_cache[key]
