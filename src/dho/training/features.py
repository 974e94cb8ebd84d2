"""Backbone features kept across heads-only runs (``student.feature_cache``).

A frozen backbone's features of a training view never change, so, like the teacher's outputs,
they are kept by view key: in a store of the teacher store's layout (float32, replayed exactly;
no logits) under ``<feature_cache>/<id>``, where the id digests the backbone's name, weights and
preprocessing, the data (root, dataset) and the views' size, crop scale and kept image side. A
later heads-only run on the same seed (another method, shot count or budget) embeds only the views
no run embedded before. A run's new features are appended once, as one shard, holding a lock
file, so runs in parallel (a sweep's workers) share one store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..students import DualHeadStudent
from ..teachers.base import TeacherOutput
from ..teachers.store import TeacherStore, store_lock

__all__ = ["FeatureStore", "backbone_id"]


def backbone_id(student: DualHeadStudent, views: dict) -> str:
    """A digest of what a view's features depend on: the backbone (name, every weight and buffer),
    the preprocessing and what the crops depend on (``views``: data root, view size, crop scale...)."""
    h = hashlib.blake2b(digest_size=8)
    pre, spec = student.preprocess, student.spec
    h.update(json.dumps({"backbone": spec.backbone, "source": spec.source, "size": pre.size, "mean": pre.mean.flatten().tolist(),
                         "std": pre.std.flatten().tolist(), "views": views}, sort_keys=True).encode())
    for name, tensor in student.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{spec.backbone}-{h.hexdigest()}"


class FeatureStore:
    """The features of one backbone and one kind of view, by view key, in ``root/<id>``."""

    def __init__(self, root: str | Path, student: DualHeadStudent, views: dict) -> None:
        self.id = backbone_id(student, views)
        self.path = Path(root).expanduser() / self.id
        self.path.mkdir(parents=True, exist_ok=True)
        with store_lock(self.path):
            if not (self.path / "meta.json").is_file():
                TeacherStore.create(self.path, self.id, student.spec.num_features, 0, dtype="float32", info={"views": views})
        self._store = TeacherStore(self.path)
        self._new: list[tuple[list[str], Tensor]] = []  # embedded here, kept by save()

    def __len__(self) -> int:
        return len(self._store)

    def embed(self, images: Tensor, keys: Sequence[str], embed: Callable[[Tensor], Tensor], write: bool) -> tuple[Tensor, int]:
        """Features [B, D] of ``images`` [B, ...] (views ``keys``): kept ones read back, the others
        embedded (and kept by ``save`` when ``write``); with how many were embedded."""
        new = [j for j, k in enumerate(keys) if k not in self._store]
        if len(new) == len(keys):
            out = embed(images)
        else:
            out = torch.empty(len(keys), self._store.meta["feature_dim"], device=images.device)
            fresh = set(new)
            old = [j for j in range(len(keys)) if j not in fresh]
            out[old] = self._store.rows([keys[j] for j in old]).features.to(images.device)
            if new:
                out[new] = embed(images[new]).float()
        if new and write:
            self._new.append(([keys[j] for j in new], out[new].float().cpu()))
        return out, len(new)

    def save(self) -> int:
        """Append the features embedded since the last save as one shard; returns how many were new."""
        if not self._new:
            return 0
        keys = [k for chunk, _ in self._new for k in chunk]
        features = torch.cat([f for _, f in self._new])
        self._new = []
        with store_lock(self.path):
            self._store = TeacherStore(self.path)  # what other writers added meanwhile
            return self._store.append(keys, TeacherOutput(features, torch.empty(len(keys), 0)))
