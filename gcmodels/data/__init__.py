"""Images in, and the datasets that ship with gcmine.

- `images`: decoding untrusted image bytes into RGB (precise reasons for rejection), working sizes;
- `synthetic`: the demo datasets with planted motifs and their ground-truth boxes;
- `parts`: the parts ground-truth set (label-typical part styles on an object every label shares).
"""

from gcmodels.data.images import (
    ImageRejected,
    decode_image,
    encode_png,
    image_id,
    reason_kind,
    to_working,
    working_size,
)
from gcmodels.data.synthetic import (
    DISTRACTOR_COLOR,
    MOTIF_STYLES,
    MotifStyle,
    SyntheticImage,
    assign_motif_styles,
    digits_dataset,
    mixed_motif_dataset,
    motif_dataset,
)

__all__ = [
    "DISTRACTOR_COLOR",
    "MOTIF_STYLES",
    "ImageRejected",
    "MotifStyle",
    "SyntheticImage",
    "assign_motif_styles",
    "decode_image",
    "digits_dataset",
    "encode_png",
    "image_id",
    "mixed_motif_dataset",
    "motif_dataset",
    "reason_kind",
    "to_working",
    "working_size",
]
