"""Synthetic image-folder datasets: each class is a smooth colour prototype plus noise.

Used by tests, `configs/tiny.yaml` and `dho synth`; pairs with the synthetic teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["class_prototype", "make_synthetic_folder"]


def class_prototype(name: str, size: int = 32) -> Tensor:
    """A deterministic smooth colour pattern for a class name: float [3, size, size] in [0, 1]."""
    seed = int.from_bytes(hashlib.sha256(f"proto|{name}".encode()).digest()[:8], "little")
    low = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]


def make_synthetic_folder(
    root: str | Path,
    classes: Sequence[str] = ("circle", "square", "triangle", "star"),
    per_class: dict[str, int] | int = 20,
    size: int = 32,
    noise: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/NNNN.png`` images. ``per_class`` maps split -> count per class
    (an int writes a single class-folder tree directly under ``root``)."""
    root = Path(root)
    splits = {"": per_class} if isinstance(per_class, int) else per_class
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for name in classes:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            proto = class_prototype(name, size).numpy().transpose(1, 2, 0)
            for i in range(count):
                shift = rng.integers(-size // 8, size // 8 + 1, size=2)
                img = np.roll(proto, tuple(shift), axis=(0, 1)) + noise * rng.standard_normal(proto.shape)
                pixels = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root
