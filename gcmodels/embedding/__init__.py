"""One vector per image, for the collection summary.

- `encoders`: the encoders of the embed stage behind one interface (`make_encoder`);
- `pca`: PCA of standardised pixel thumbnails (the default; `PixelPCAEncoder`, also listed by `encoders`);
- `autoencoders`: small torch autoencoders (conv, VAE, MLP) and the loop that trains them.
"""

from gcmodels.embedding.autoencoders import ConvAutoencoder, MLPAutoencoder, build_seeded, train_autoencoder
from gcmodels.embedding.encoders import (
    ENCODERS,
    CLIPImageEncoder,
    ConvAutoencoderEncoder,
    ConvVAEEncoder,
    DiffusionFeatureEncoder,
    PixelPCAEncoder,
    fits_on_collection,
    make_encoder,
)

__all__ = [
    "ENCODERS",
    "CLIPImageEncoder",
    "ConvAutoencoder",
    "ConvAutoencoderEncoder",
    "ConvVAEEncoder",
    "DiffusionFeatureEncoder",
    "MLPAutoencoder",
    "PixelPCAEncoder",
    "build_seeded",
    "fits_on_collection",
    "make_encoder",
    "train_autoencoder",
]
