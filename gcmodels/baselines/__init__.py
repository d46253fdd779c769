"""What the method is compared with.

- `doersch`: discriminative patch mining after Doersch et al. 2012 (HOG + linear detectors;
  kept hand-written: no maintained library implements it).
"""

from gcmodels.baselines.doersch import DiscriminativeMiner, MinedDetectors, hog_cells, patch_descriptors

__all__ = [
    "DiscriminativeMiner",
    "MinedDetectors",
    "hog_cells",
    "patch_descriptors",
]
