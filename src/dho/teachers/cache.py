"""Teacher outputs computed once per augmented view and replayed.

Training views are pure functions of (seed, sample id, view), so the teacher's logits for a view
never change: this cache keys them by the view key that :class:`dho.data.TrainViews` returns and
runs the teacher only on views it has not seen. Within one process it is shared across epochs and
across methods trained on the same seed; replayed logits are exactly the online ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Teacher

__all__ = ["TeacherCache"]


class TeacherCache:
    """``logits`` maps view keys to teacher logits [C] (float32, CPU); ``prefilled`` seeds it with
    outputs computed elsewhere (another process, an earlier run)."""

    def __init__(self, teacher: Teacher, prefilled: dict[str, Tensor] | None = None) -> None:
        self.teacher = teacher
        self._logits: dict[str, Tensor] = dict(prefilled or {})
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._logits)

    def __contains__(self, key: str) -> bool:
        return key in self._logits

    def update(self, logits: dict[str, Tensor]) -> None:
        self._logits.update(logits)

    @torch.no_grad()
    def logits(self, images: Tensor, keys: Sequence[str]) -> Tensor:
        """images [B, 3, S, S] on the teacher's device, keys [B] -> teacher logits [B, C] there."""
        missing = [i for i, key in enumerate(keys) if key not in self._logits]
        if missing:
            fresh = self.teacher(images[missing]).logits.float().cpu()
            for i, row in zip(missing, fresh):
                self._logits[keys[i]] = row
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self._logits[key] for key in keys]).to(images.device)
