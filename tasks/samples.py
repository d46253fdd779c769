"""samples: did the model learn the data? Per label, samples of the fine-tuned model (seeded DDIM
from noise, gcmodels/diffusion/sampling.py) compared with the real images of that label on the embed
stage's encoder's features (gcmodels/mining/frechet.py): the Frechet distance between the two feature
sets (per label and over every label; named after the encoder, never called FID: it is not on
Inception features), and the share of samples whose nearest real image carries the label they
were generated for. With `report.inception` (a local TorchScript FID Inception-v3), both are on
its pool features instead, and the distance is the FID.

Writes `samples.parquet` (one row per sample: its PNG and nearest real image) and
`sample_quality.parquet` (per label and `(all)`), both tagged with the model's fingerprint so the
report shows them only beside the model that made them.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image
from prefect import task

from gcmine.tasks.infra.artifacts import MODEL, SAMPLE_QUALITY, SAMPLES, label_frequencies, read_images, stopwatch
from gcmine.tasks.infra.logs import stage_logger
from gcmine.tasks.infra.models import TRAINING_SET, model_stage
from gcmodels.config import ConfigError, EmbedConfig, ReportConfig, RuntimeConfig
from gcmodels.diffusion.sampling import Sampler
from gcmodels.embedding.encoders import fits_on_collection, make_encoder
from gcmodels.mining.frechet import ALL, FID_FEATURES, inception_features, sample_quality
from gcmodels.mining.translation import to_uint8

__all__ = ["ALL", "FID_FEATURES", "QUALITY_COLUMNS", "SAMPLE_COLUMNS", "check_inception", "load_inception", "samples"]
SAMPLE_COLUMNS = [
    "label",
    "sample",
    "png",
    "nearest_image_id",
    "nearest_label",
    "nearest_distance",
    "seed",
    "steps",
    "fingerprint",
]
QUALITY_COLUMNS = [
    "label",
    "samples",
    "real_images",
    "frechet",
    "nearest_label_share",
    "features",
    "dim",
    "fingerprint",
]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load_inception(path: str, device: torch.device | str = "cpu"):
    """The FID Inception-v3 TorchScript network at the local `path`, checked: it loads, and a
    32 x 32 uint8 image gives its 2048 pool features. ConfigError naming the file and the problem."""
    from pathlib import Path

    if "://" in path and not path.startswith("file://"):
        raise ConfigError(f"report.inception must be a local file (nothing is downloaded), got {path}")
    file = Path(path.removeprefix("file://")).expanduser()
    if not file.is_file():
        raise ConfigError(f"report.inception {file} is not a file: give the local TorchScript Inception-v3 (.pt)")
    try:
        network = torch.jit.load(str(file), map_location=str(device)).eval()
        inception_features(network, np.zeros((1, 32, 32, 3), np.uint8), device=str(device))
    except ValueError as err:
        raise ConfigError(f"report.inception {file}: {err}") from None
    except Exception as err:  # any load or forward failure: the file is not the network
        raise ConfigError(
            f"report.inception {file} is not a usable TorchScript Inception-v3 called as network(images, "
            f"return_features=True): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    return network


def check_inception(path: str | None) -> None:
    """Before any work: `report.inception`, when set, loads and gives the FID's features."""
    if path is not None:
        load_inception(path)


def _real_features(store, shards: list[str], embeddings: str, trained: pd.Series, config: EmbedConfig, model, device):
    """The embed stage's encoder and the features of the images the model was trained on
    (`trained`: image_id -> label): an encoder fitted on the collection (pca, autoencoder, vae)
    is fitted again on every live image as the embed stage fits it (same settings and seed) and
    embeds them; for clip and diffusion (no fit) the features are the run's `embeddings` table.
    Returns (encoder, image ids (N,), features (N, D) float64)."""
    if fits_on_collection(config.method):
        meta, pixels = read_images(store, shards)
        encoder = make_encoder(config).fit(pixels)
        keep = meta["image_id"].isin(trained.index).to_numpy()
        ids = meta["image_id"][keep].to_numpy()
        return encoder, ids, np.asarray(encoder.transform(pixels[keep]), np.float64) if keep.any() else np.zeros((0, 1))
    if config.method == "clip":
        from gcmine.tasks.embed import clip_encoder

        encoder = clip_encoder(config)
    else:
        encoder = make_encoder(config, diffusion=model, device=str(device)).fit()
    table = store.read_parquet(embeddings)
    table = table[table["image_id"].isin(trained.index)]
    features = np.stack(table["embedding"].to_numpy()).astype(np.float64) if len(table) else np.zeros((0, 1))
    return encoder, table["image_id"].to_numpy(), features


@task(name="samples", task_run_name="samples")
def samples(
    out: str,
    shards: list[str],
    fingerprint: str,
    embeddings: str,
    config: ReportConfig,
    embed: EmbedConfig,
    resolution: int,
    runtime: RuntimeConfig,
    storage_options: dict | None = None,
) -> dict:
    """`config.samples` samples of every label the model was trained on (`config.sample_steps`
    DDIM steps, noise from `config.sample_seed`), compared with the label's training images on
    the features of `embed`'s encoder (`embeddings`: the embed stage's table of the run);
    writes `samples.parquet` and `sample_quality.parquet`."""
    log = stage_logger()
    with stopwatch() as clock, model_stage(out, fingerprint, runtime, storage_options) as (store, model, device):
        trained = store.read_parquet(f"{MODEL}/{TRAINING_SET}")
        trained = trained[trained["label"].map(lambda v: isinstance(v, str))]
        labels = [lab for lab in model.labels if lab in label_frequencies(trained["label"]).index]
        by_id = trained.drop_duplicates("image_id").set_index("image_id")["label"]
        if config.inception is None:
            encoder, real_ids, real_f = _real_features(store, shards, embeddings, by_id, embed, model, device)
            name = str(encoder.describe().get("encoder", embed.method))
            features_of = encoder.transform
        else:  # the FID: real and generated images on the Inception network's pool features
            network = load_inception(config.inception, device)
            meta, pixels = read_images(store, shards)
            keep = meta["image_id"].isin(by_id.index).to_numpy()
            real_ids = meta["image_id"][keep].to_numpy()
            real_f = inception_features(network, pixels[keep], device=str(device))
            name = FID_FEATURES
            features_of = lambda images: inception_features(network, images, device=str(device))  # noqa: E731
        real_labels = by_id.reindex(real_ids).to_numpy().astype(object)
        if not labels or len(real_ids) == 0:
            log.warning("no trained label has an image among the live images: no samples")
            return {"samples": 0, "seconds": 0.0, "skipped": "no trained label has a live image"}
        latent = model.latent_space  # a VAE's or the collection autoencoder's latents: decoded
        shape = model.model_shape(resolution, resolution)
        sampler = Sampler(steps=config.sample_steps, clip=None if latent else 1.0, seed=config.sample_seed)
        x = sampler.sample(model, model.label_index(labels), config.samples, shape, device=device)
        if latent:
            images = torch.cat([model.decode(x[i : i + 16].to(device)).cpu() for i in range(0, len(x), 16)])
        else:
            images = to_uint8(x)
        generated = images.permute(0, 2, 3, 1).contiguous().numpy()  # (L * n, H, W, 3) uint8
        if generated.shape[1:3] != (
            resolution,
            resolution,
        ):  # e.g. a latent model's decoded size: compare at the working size
            generated = np.stack(
                [np.asarray(Image.fromarray(g).resize((resolution, resolution), Image.BICUBIC)) for g in generated]
            )
        sample_labels = np.repeat(np.array(labels, dtype=object), config.samples)
        gen_f = np.asarray(features_of(generated), np.float64)
        quality, nearest, distance = sample_quality(sample_labels, gen_f, real_labels, real_f)
        quality = quality.assign(features=name, dim=int(gen_f.shape[1]), fingerprint=fingerprint)[QUALITY_COLUMNS]
        table = pd.DataFrame(
            {
                "label": sample_labels,
                "sample": np.tile(np.arange(config.samples), len(labels)),
                "png": [_png(g) for g in generated],
                "nearest_image_id": real_ids[nearest],
                "nearest_label": real_labels[nearest],
                "nearest_distance": distance,
                "seed": config.sample_seed,
                "steps": config.sample_steps,
                "fingerprint": fingerprint,
            }
        )[SAMPLE_COLUMNS]
        store.write_parquet(SAMPLES, table)
        store.write_parquet(SAMPLE_QUALITY, quality)
    overall = quality[quality["label"] == ALL].iloc[0]
    log.info(
        "%d samples of %d labels (%d DDIM steps): Frechet distance on %s features %.4g, nearest real image of the "
        "sample's label for %.0f%% in %.1f s",
        len(table),
        len(labels),
        config.sample_steps,
        name,
        overall["frechet"],
        100 * overall["nearest_label_share"],
        clock["seconds"],
    )
    return {
        "samples": len(table),
        "labels": len(labels),
        "steps": config.sample_steps,
        "features": name,
        "frechet": float(overall["frechet"]),
        "nearest_label_share": float(overall["nearest_label_share"]),
        "seconds": clock["seconds"],
    }
