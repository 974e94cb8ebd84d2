"""A deterministic CLIP-like teacher for tests and tiny runs: fixed random projections.

Image features are a fixed random projection of an 8x8 average-pooled image. The "text" of a
prompt for class c is the image feature of c's prototype (see :mod:`dho.data.synthetic`) plus a
fixed, prompt-dependent perturbation, so the teacher is informative on synthetic data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.synthetic import class_prototype
from ..preprocess import Preprocess
from .base import Teacher, prompt_name

__all__ = ["SyntheticTeacher"]


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


class SyntheticTeacher(Teacher):
    proj: Tensor  # buffer, registered in __init__

    def __init__(self, embed_dim: int = 64, seed: int = 0, image_size: int = 32, zeta: float = 0.01) -> None:
        super().__init__(Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), image_size), zeta=zeta)
        self.id = f"synthetic-d{embed_dim}-s{seed}"
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 64, embed_dim, generator=gen) / 8.0, persistent=False)

    def encode_image(self, pixels: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(pixels.float(), 8).flatten(1)  # [B, 192]
        return pooled @ self.proj

    def embed_prompts(self, classname: str, templates: Sequence[str]) -> Tensor:
        proto = class_prototype(classname, self.image_size).unsqueeze(0)
        base = F.normalize(self.encode_image(self.preprocess(proto)), dim=-1)  # [1, D]
        rows = []
        for template in templates:
            gen = torch.Generator().manual_seed(_seed_of(f"{self.seed}|{template.format(prompt_name(classname))}"))
            rows.append(base[0] + 2.0 * torch.randn(base.shape[1], generator=gen) / base.shape[1] ** 0.5)
        return torch.stack(rows)
