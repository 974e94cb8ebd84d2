"""Image decoding (by the policy of :mod:`dho.data.decode`), the evaluation transform, and
exactly replayable training crops.

Every training crop and flip is a pure function of hash(seed, sample id, pass), so the same
view can be regenerated at any time (teacher caching, resume) regardless of worker layout.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from . import decode

__all__ = ["IMAGE_EXTENSIONS", "CropParams", "apply_crop", "crop_params", "decode_image", "eval_view", "to_uint8_tensor"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """PIL image -> uint8 [3, H, W] (RGB), converted by the decode policy (EXIF, alpha on white, ...)."""
    array, _ = decode.to_rgb(image)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_image(path: str | Path) -> Tensor:
    """An image file -> uint8 [3, H, W]; a file that cannot be decoded raises :class:`BadImage`."""
    array, _ = decode.open_rgb(path)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def eval_view(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` and centre-crop ``size`` x ``size`` (uint8 in, uint8 out)."""
    if image.shape[-2:] != (size, size):
        image = TF.resize(image, [size], antialias=True)
        image = TF.center_crop(image, [size, size])
    return image


@dataclass(frozen=True)
class CropParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def crop_params(
    seed: int, sample_id: str, epoch: int, height: int, width: int,
    scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropParams:
    """A RandomResizedCrop box and a horizontal flip drawn from hash(seed, sample_id, epoch)."""
    digest = hashlib.blake2b(f"{seed}|{sample_id}|{epoch}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return CropParams(top, left, h, w, rng.random() < 0.5)
    # Fallback: the largest centred box with an aspect ratio inside the allowed range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return CropParams((height - h) // 2, (width - w) // 2, h, w, rng.random() < 0.5)


def apply_crop(image: Tensor, params: CropParams, size: int) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size]: crop, resize (antialiased), maybe flip."""
    out = TF.resized_crop(image, params.top, params.left, params.height, params.width, [size, size], antialias=True)
    return out.flip(-1) if params.flip else out
