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

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from . import decode

__all__ = ["IMAGE_EXTENSIONS", "CropParams", "apply_crop", "array_to_uint8_tensor", "crop_params", "decode_image", "eval_view", "shrink",
           "to_uint8_tensor"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """PIL image -> uint8 [3, H, W] (RGB), converted by the decode policy (EXIF, alpha on white, ...)."""
    array, _ = decode.to_rgb(image)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def array_to_uint8_tensor(array: np.ndarray) -> Tensor:
    """A numpy image as image libraries hand it over -> uint8 [3, H, W]: [H, W, 3] RGB or
    [H, W, 4] RGBA (HWC, as PIL and OpenCV arrays are; OpenCV's BGR order must be flipped first),
    [H, W] grey, or [3, H, W]; uint8, or floats in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be [H, W], [H, W, 3|4] or [3, H, W], not {list(a.shape)}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or (a.size and not 0 <= a.min() <= a.max() <= 1):
            raise ValueError(f"an image array must be uint8, or floats in [0, 1] (got {a.dtype})")
        a = np.rint(a * 255.0).astype(np.uint8)
    if a.shape[2] == 4:  # alpha on white, as decoded files are
        rgb, alpha = a[:, :, :3].astype(np.float32), a[:, :, 3:].astype(np.float32) / 255.0
        a = np.rint(rgb * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return torch.from_numpy(np.array(a, dtype=np.uint8, order="C")).permute(2, 0, 1).contiguous()  # a copy: writable


def decode_image(path: str | Path) -> Tensor:
    """An image file -> uint8 [3, H, W]; a file that cannot be decoded raises :class:`BadImage`."""
    array, _ = decode.open_rgb(path)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def shrink(image: Tensor, side: int | None) -> Tensor:
    """``image`` with its shorter side brought down to ``side`` (antialiased; never enlarged)."""
    if side is None or min(image.shape[-2:]) <= side:
        return image
    return TF.resize(image, [side], antialias=True)


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
