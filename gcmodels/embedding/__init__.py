"""One vector per image, for the collection summary.

- `encoders`: the encoders of the embed stage behind one interface (`make_encoder`);
- `pca`: PCA of standardised pixel thumbnails (the default);
- `autoencoders`: small torch autoencoders (conv, VAE, MLP) and the loop that trains them.
"""

from gcmodels.embedding.encoders import CLIPImageEncoder, ConvAutoencoderEncoder, ConvVAEEncoder, DiffusionFeatureEncoder, ENCODERS, PixelPCAEncoder, fits_on_collection, make_encoder
from gcmodels.embedding.pca import PixelPCAEncoder
from gcmodels.embedding.autoencoders import ConvAutoencoder, MLPAutoencoder, build_seeded, train_autoencoder

__all__ = [
    "CLIPImageEncoder",
    "ConvAutoencoder",
    "ConvAutoencoderEncoder",
    "ConvVAEEncoder",
    "DiffusionFeatureEncoder",
    "ENCODERS",
    "MLPAutoencoder",
    "PixelPCAEncoder",
    "build_seeded",
    "fits_on_collection",
    "make_encoder",
    "train_autoencoder",
]
