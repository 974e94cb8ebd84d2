"""Teacher outputs computed once per augmented view and replayed.

Training views are pure functions of (seed, sample id, view), so the teacher's outputs for a view
never change: this cache keys them by the view key that :class:`dho.data.TrainViews` returns and
runs the teacher only on views it has not seen. It is shared across epochs and across methods and
shot counts trained on the same seed, and can be saved and reloaded (``save`` / ``load``);
replayed outputs are exactly the online ones. One cache belongs to one teacher, view size and
crop scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .base import Teacher, TeacherOutput

__all__ = ["TeacherCache"]


class TeacherCache:
    """Maps view keys to the teacher's (features [D], logits [C]) (float32, CPU).

    ``prefilled`` seeds it with outputs computed elsewhere: a dict key -> (features, logits).
    """

    def __init__(self, teacher: Teacher, prefilled: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        self.teacher = teacher
        self._rows: dict[str, tuple[Tensor, Tensor]] = dict(prefilled or {})
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def update(self, keys: Sequence[str], outputs: TeacherOutput) -> None:
        """Store rows of ``outputs`` ([N, D] features, [N, C] logits) under ``keys`` [N]."""
        for key, f, t in zip(keys, outputs.features.float().cpu(), outputs.logits.float().cpu()):
            self._rows[key] = (f, t)

    @torch.no_grad()
    def outputs(self, images: Tensor, keys: Sequence[str]) -> TeacherOutput:
        """images [B, 3, S, S] on the teacher's device, keys [B] -> features [B, D], logits [B, C] there."""
        missing = [i for i, key in enumerate(keys) if key not in self._rows]
        if missing:
            self.update([keys[i] for i in missing], self.teacher(images[missing]))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        rows = [self._rows[key] for key in keys]
        device = images.device
        return TeacherOutput(torch.stack([f for f, _ in rows]).to(device), torch.stack([t for _, t in rows]).to(device))

    def logits(self, images: Tensor, keys: Sequence[str]) -> Tensor:
        return self.outputs(images, keys).logits

    def save(self, path: str | Path) -> Path:
        """One file (keys, features, logits); written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._rows)
        data = {"keys": keys, "teacher": getattr(self.teacher, "id", "teacher"),
                "features": torch.stack([self._rows[k][0] for k in keys]) if keys else torch.empty(0),
                "logits": torch.stack([self._rows[k][1] for k in keys]) if keys else torch.empty(0)}
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(data, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, teacher: Teacher, path: str | Path) -> TeacherCache:
        """A cache saved by :meth:`save` for the same teacher (checked by its id)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data["teacher"] != getattr(teacher, "id", "teacher"):
            raise ValueError(f"{path} holds outputs of teacher {data['teacher']!r}, not {teacher.id!r}")
        return cls(teacher, {k: (f, t) for k, f, t in zip(data["keys"], data["features"], data["logits"])})
