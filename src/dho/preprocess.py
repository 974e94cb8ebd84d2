"""Per-model input preprocessing: each teacher and student owns one (DESIGN.md rule 5).

Datasets yield un-normalised images (uint8 in [0, 255] or float in [0, 1]); a model resizes
them to its own input size when needed and normalises with its own mean/std on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Preprocess(nn.Module):
    """uint8/[0,1] images [B, 3, H, W] -> normalised float [B, 3, size, size]."""

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int, channels_last: bool = False) -> None:
        super().__init__()
        self.size = int(size)
        self.channels_last = channels_last  # hand convolutional models NHWC memory (faster on CPU)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def extra_repr(self) -> str:
        return f"size={self.size}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"

    def describe(self) -> dict:
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(), "size": self.size}
