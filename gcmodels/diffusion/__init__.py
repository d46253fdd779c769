"""Conditional diffusion models behind one interface (`ConditionalDiffusion`, see base.py).

- `pixel`: the embedded default, a small pixel-space UNet trained from scratch (eps, v or flow),
  or on the latents of `autoencoder`, a small autoencoder learnt on the collection;
- one module per checkpoint family read from a local diffusers directory (`families` finds them):
  `sd` (Stable Diffusion 1.x/2.x), `sdxl` (SDXL), `sd3` (SD3 / SD3.5), `dit` (class-conditional DiT);
- `latent`: what the checkpoint families share (VAE latents, frozen conditioning, LoRA, save);
- `parametrisation`: eps / v / flow-matching and the conversions to the common eps space;
- `training`: the one training loop of every model (label dropout gives the null model; resumable
  from checkpoints, which is why it is ours and not a library's: the run root must resume it);
- `sampling`: deterministic DDIM samples from pure noise (the report's "did it learn the data?").

The estimator, the trainer, the features and the tasks see only the base class.
"""

from gcmodels.diffusion.autoencoder import AutoencoderResult, CollectionAutoencoder, train_collection_autoencoder
from gcmodels.diffusion.base import NULL_LABEL, ConditionalDiffusion, validate_label_vocabulary
from gcmodels.diffusion.families import (
    UnsupportedModel,
    families,
    inspect_base,
    load_any_model,
    load_base,
    supported_families,
    unavailable_families,
)
from gcmodels.diffusion.latent import CheckpointInfo, LatentDiffusion, LatentEncoder, ModelLayoutError
from gcmodels.diffusion.pixel import PixelDiffusion
from gcmodels.diffusion.sampling import Sampler, check_ddim_settings, ddim_denoise
from gcmodels.diffusion.training import (
    CHECKPOINT_FORMAT,
    PRECISIONS,
    CheckpointMismatch,
    TrainingDiverged,
    TrainResult,
    train_diffusion,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "NULL_LABEL",
    "PRECISIONS",
    "AutoencoderResult",
    "CheckpointInfo",
    "CheckpointMismatch",
    "CollectionAutoencoder",
    "ConditionalDiffusion",
    "LatentDiffusion",
    "LatentEncoder",
    "ModelLayoutError",
    "PixelDiffusion",
    "Sampler",
    "TrainResult",
    "TrainingDiverged",
    "UnsupportedModel",
    "check_ddim_settings",
    "ddim_denoise",
    "families",
    "inspect_base",
    "load_any_model",
    "load_base",
    "supported_families",
    "train_collection_autoencoder",
    "train_diffusion",
    "unavailable_families",
    "validate_label_vocabulary",
]
