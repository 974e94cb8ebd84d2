"""Teacher outputs on disk: sharded, memory-mapped arrays keyed by view key.

A store is a directory::

    meta.json                 teacher id, dtype, dimensions, top-k, the shards (rows each), free-form info
    keys-00000.txt            one view key per line
    features-00000.npy        [rows, D] L2-normalised image features
    logits-00000.npy          [rows, C] logits            (or, with top-k:)
    topk_values-00000.npy     [rows, K] the K largest logits
    topk_indices-00000.npy    [rows, K] their class indices (int32)

Shards are written completely before ``meta.json`` names them (temporary file, then rename), so a
store that can be opened is never half written; adding outputs appends a shard. Writers in several
processes (or on several nodes over shared storage) hold :func:`store_lock` and reopen the store
before they append. Arrays are read with ``numpy.load(mmap_mode="r")``: opening a store costs
nothing and only the rows a batch needs are read. Top-k logits give the teacher's distribution restricted to its K best classes: the other
logits read back as :data:`MISSING_LOGIT`, whose probability is 0 in float32.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor

from ..files import write_file_atomic
from .base import TeacherOutput

__all__ = ["MISSING_LOGIT", "TeacherStore", "store_lock"]

MISSING_LOGIT = -1e4
DTYPES = {"float16": np.float16, "float32": np.float32}


@contextmanager
def store_lock(path: str | Path) -> Iterator[None]:
    """Hold ``<path>/.lock`` (created with the directory): one writer of the store at a time."""
    Path(path).mkdir(parents=True, exist_ok=True)
    with open(Path(path) / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file object: np.save would add ".npy" to a temporary name
        np.save(fh, array)


def _atomic_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1)
    write_file_atomic(path, lambda p: p.write_text(text))


class TeacherStore:
    """A read-mostly on-disk table of teacher outputs; see the module docstring for the layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a teacher store (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self.index: dict[str, tuple[int, int]] = {}
        self._arrays: list[dict[str, np.ndarray]] = []
        for s, shard in enumerate(self.meta["shards"]):
            keys = (self.path / f"keys-{shard['name']}.txt").read_text().split("\n")[: shard["rows"]]
            self.index.update((k, (s, r)) for r, k in enumerate(keys))
            self._arrays.append({kind: np.load(self.path / f"{kind}-{shard['name']}.npy", mmap_mode="r", allow_pickle=False)
                                 for kind in self._kinds()})

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, teacher_id: str, feature_dim: int, num_classes: int, *,
               dtype: str = "float16", topk: int | None = None, info: dict | None = None,
               classes: Sequence[str] | None = None, templates: Sequence[str] | None = None) -> TeacherStore:
        """An empty store (the directory must not hold one already). ``classes`` and ``templates``
        (the teacher's prompts) are recorded so that a reader can check it asks the same question."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if topk is not None and not 0 < topk <= num_classes:
            raise ValueError(f"topk={topk} must be in [1, {num_classes}]")
        path = Path(path)
        if (path / "meta.json").exists():
            raise FileExistsError(f"{path} already holds a teacher store")
        path.mkdir(parents=True, exist_ok=True)
        _atomic_json(path / "meta.json", {"format": 1, "teacher": teacher_id, "dtype": dtype, "feature_dim": feature_dim,
                                          "num_classes": num_classes, "topk": topk, "shards": [], "info": info or {},
                                          "classes": list(classes) if classes is not None else None,
                                          "templates": list(templates) if templates is not None else None})
        return cls(path)

    def _kinds(self) -> tuple[str, ...]:
        return ("features", "topk_values", "topk_indices") if self.meta["topk"] else ("features", "logits")

    def append(self, keys: Sequence[str], outputs: TeacherOutput) -> int:
        """Write the rows whose keys the store lacks as one new shard; returns how many were new."""
        first: dict[str, int] = {}
        for j, k in enumerate(keys):
            if k not in self.index:
                first.setdefault(k, j)  # the first row of a repeated key
        fresh = list(first.values())
        if not fresh:
            return 0
        if any("\n" in keys[j] for j in fresh):
            raise ValueError("view keys must not contain newlines")
        rows = torch.tensor(fresh)
        dtype = DTYPES[self.meta["dtype"]]
        arrays = {"features": outputs.features[rows].float().cpu().numpy().astype(dtype)}
        logits = outputs.logits[rows].float().cpu()
        if self.meta["topk"]:
            top = logits.topk(self.meta["topk"], dim=-1)
            arrays["topk_values"] = top.values.numpy().astype(dtype)
            arrays["topk_indices"] = top.indices.numpy().astype(np.int32)
        else:
            arrays["logits"] = logits.numpy().astype(dtype)
        name = f"{len(self.meta['shards']):05d}"
        for kind, array in arrays.items():
            write_file_atomic(self.path / f"{kind}-{name}.npy", partial(_save_npy, array=array))
        text = "\n".join(keys[j] for j in fresh)
        write_file_atomic(self.path / f"keys-{name}.txt", lambda p: p.write_text(text))  # meta.json names the shard last
        meta = {**self.meta, "shards": [*self.meta["shards"], {"name": name, "rows": len(fresh)}]}
        _atomic_json(self.path / "meta.json", meta)
        self.meta = meta
        s = len(self._arrays)
        self.index.update((keys[j], (s, r)) for r, j in enumerate(fresh))
        self._arrays.append({kind: np.load(self.path / f"{kind}-{name}.npy", mmap_mode="r", allow_pickle=False)
                             for kind in self._kinds()})
        return len(fresh)

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    @property
    def teacher_id(self) -> str:
        return self.meta["teacher"]

    def rows(self, keys: Sequence[str]) -> TeacherOutput:
        """Features [B, D] and logits [B, C] (float32, CPU) of ``keys``, all present in the store."""
        if not keys:
            return TeacherOutput(torch.empty(0, self.meta["feature_dim"]), torch.empty(0, self.meta["num_classes"]))
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} view keys are not in {self.path}, e.g. {missing[0]!r}")
        where = np.array([self.index[k] for k in keys], dtype=np.int64).reshape(-1, 2)
        out: dict[str, Tensor | None] = dict.fromkeys(self._kinds())
        for s in np.unique(where[:, 0]):
            pos = np.nonzero(where[:, 0] == s)[0]
            for kind, array in self._arrays[s].items():
                block = torch.from_numpy(np.ascontiguousarray(array[where[pos, 1]]))
                dest = out[kind]
                if dest is None:
                    dest = out[kind] = torch.empty((len(keys), *block.shape[1:]), dtype=block.dtype)
                dest[torch.from_numpy(pos)] = block
        filled = cast(dict[str, Tensor], out)  # keys is not empty and every shard holds every kind
        feats = filled["features"].float()
        if self.meta["topk"]:
            logits = torch.full((len(keys), self.meta["num_classes"]), MISSING_LOGIT)
            logits.scatter_(1, filled["topk_indices"].long(), filled["topk_values"].float())
        else:
            logits = filled["logits"].float()
        return TeacherOutput(feats, logits)
