"""A tiny TorchScript network with the calling convention of the FID's Inception-v3 TorchScript
(NVIDIA's inception-2015-12-05.pt): ``network(uint8 images (B, 3, H, W), return_features=True)``
-> (B, 2048) pool features. Random weights, built and saved by the tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["build_tiny_inception"]


class _TinyInception(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, features)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        x = x.to(torch.float32) / 127.5 - 1.0
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # the real one: 299 x 299
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        feats = self.fc(x)
        return feats if return_features else feats.softmax(1)


def build_tiny_inception(path: str | Path, *, features: int = 2048, seed: int = 0) -> Path:
    """Save a scripted `_TinyInception` (seeded) at `path`; `features` != 2048 makes a wrong one."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_TinyInception(features).eval()).save(str(path))
    return path
