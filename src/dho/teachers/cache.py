"""Teacher outputs computed once per augmented view and replayed.

Training views are pure functions of (seed, sample id, view), so the teacher's outputs for a view
never change: this cache keys them by the view key that :class:`dho.data.TrainViews` returns and
runs the teacher only on views it has not seen. Rows live in memory and, once saved, in an
on-disk :class:`~dho.teachers.store.TeacherStore` (memory-mapped, sharded; float32 replays the
online outputs exactly, float16 to half precision). One cache belongs to one teacher, view size
and crop scale; it is shared across epochs, methods and shot counts trained on the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .base import Teacher, TeacherOutput
from .store import TeacherStore, store_lock

__all__ = ["TeacherCache"]


class TeacherCache:
    """Maps view keys to the teacher's (features [D], logits [C]).

    ``prefilled`` seeds the memory rows with outputs computed elsewhere (key -> (features, logits));
    ``store`` backs the cache with outputs on disk.
    """

    def __init__(self, teacher: Teacher, prefilled: dict[str, tuple[Tensor, Tensor]] | None = None,
                 store: TeacherStore | None = None) -> None:
        self.teacher = teacher
        self.store = store
        self._rows: dict[str, tuple[Tensor, Tensor]] = {}
        for key, (f, t) in (prefilled or {}).items():
            if store is None or key not in store:
                self._rows[key] = (f, t)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows) + (len(self.store) if self.store is not None else 0)

    def __contains__(self, key: str) -> bool:
        return key in self._rows or (self.store is not None and key in self.store)

    def update(self, keys: Sequence[str], outputs: TeacherOutput) -> None:
        """Keep rows of ``outputs`` ([N, D] features, [N, C] logits) under ``keys`` [N] in memory."""
        for key, f, t in zip(keys, outputs.features.float().cpu(), outputs.logits.float().cpu()):
            if self.store is None or key not in self.store:
                self._rows[key] = (f, t)

    @torch.no_grad()
    def outputs(self, images: Tensor, keys: Sequence[str]) -> TeacherOutput:
        """images [B, 3, S, S] on the teacher's device, keys [B] -> features [B, D], logits [B, C] there."""
        missing = [i for i, key in enumerate(keys) if key not in self]
        if missing:
            self.update([keys[i] for i in missing], self.teacher(images[missing]))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        stored = [i for i, key in enumerate(keys) if key not in self._rows]
        if not stored:
            rows = [self._rows[key] for key in keys]
            feats, logits = torch.stack([f for f, _ in rows]), torch.stack([t for _, t in rows])
        else:
            assert self.store is not None  # every key is in the cache now: those not in memory are in the store
            from_store = self.store.rows([keys[i] for i in stored])
            feats = torch.empty(len(keys), from_store.features.shape[1])
            logits = torch.empty(len(keys), from_store.logits.shape[1])
            feats[stored], logits[stored] = from_store.features, from_store.logits
            in_memory = [i for i, key in enumerate(keys) if key in self._rows]
            if in_memory:
                feats[in_memory] = torch.stack([self._rows[keys[i]][0] for i in in_memory])
                logits[in_memory] = torch.stack([self._rows[keys[i]][1] for i in in_memory])
        device = images.device
        return TeacherOutput(feats.to(device, non_blocking=True), logits.to(device, non_blocking=True))

    def logits(self, images: Tensor, keys: Sequence[str]) -> Tensor:
        return self.outputs(images, keys).logits

    def save(self, path: str | Path, dtype: str = "float32", topk: int | None = None, info: dict | None = None) -> Path:
        """Append the memory rows, as one shard, to the store at ``path`` (created with ``dtype``,
        ``topk`` and ``info`` when absent). Afterwards they are read from there, at its precision."""
        path = Path(path)
        if self.store is not None and self.store.path.resolve() != path.resolve():
            raise ValueError(f"this cache reads the store at {self.store.path}; save it there, not to {path}")
        teacher_id = getattr(self.teacher, "id", "teacher")
        with store_lock(path):  # another process may have appended since this cache opened the store
            if (path / "meta.json").is_file():
                target = TeacherStore(path)
            else:
                num_classes, feature_dim = self.teacher.class_embeddings.shape
                target = TeacherStore.create(path, teacher_id, feature_dim, num_classes, dtype=dtype, topk=topk, info=info,
                                             classes=self.teacher.classnames, templates=self.teacher.templates)
            _check_same_teacher(target, self.teacher)
            if self._rows:
                keys = list(self._rows)
                target.append(keys, TeacherOutput(torch.stack([self._rows[k][0] for k in keys]),
                                                  torch.stack([self._rows[k][1] for k in keys])))
        self.store, self._rows = target, {}
        return path

    @classmethod
    def load(cls, teacher: Teacher, path: str | Path) -> TeacherCache:
        """A cache over the store at ``path``, written for the same teacher (checked by its id)."""
        store = TeacherStore(path)
        _check_same_teacher(store, teacher)
        return cls(teacher, store=store)


def _check_same_teacher(store: TeacherStore, teacher: Teacher) -> None:
    """Same teacher id, and (for stores that record them) the same classes in the same order and
    the same prompt templates: otherwise the stored logits answer another question."""
    teacher_id = getattr(teacher, "id", "teacher")
    if store.teacher_id != teacher_id:
        raise ValueError(f"{store.path} holds outputs of teacher {store.teacher_id!r}, not {teacher_id!r}")
    classes, templates = store.meta.get("classes"), store.meta.get("templates")
    if classes is not None and classes != list(teacher.classnames):
        raise ValueError(f"{store.path} holds logits for other classes (or another class order) than this run's")
    if templates is not None and templates != list(teacher.templates):
        raise ValueError(f"{store.path} was computed with other prompt templates than teacher.templates of this run")
    if store.meta["num_classes"] != len(teacher.classnames):
        raise ValueError(f"{store.path} holds logits for {store.meta['num_classes']} classes, not {len(teacher.classnames)}")
