"""The split manifest: which image of a dataset goes to which split, saved as JSON (never pickled)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from ..files import write_file_atomic

__all__ = ["SPLITS", "UNLABELED", "Item", "SplitInfo", "SplitManifest"]

Item = tuple[str, int]  # (path relative to the dataset root, or absolute outside it; class index)
UNLABELED = -1  # the class index of an unlabeled image whose class nobody knows (data.unlabeled)
SPLITS = ("labeled", "unlabeled", "val", "test")


class SplitInfo(TypedDict, total=False):
    """How a manifest was drawn (``splits.json``'s ``info``, results.json's ``split``)."""

    seed: int
    shots: int | str | None  # str: "all"
    fraction: float | None
    protocol: str  # e.g. "caltech101 16-shot, seed 1, val full"
    shot_draw: str
    source: str  # the split list or folder the pools came from
    format: str
    dataset: str
    wnids: list[str]
    variant: str
    train_source: str
    val_source: str
    test_source: str
    subset_file: str
    fewshot_file: str
    max_unlabeled: int
    dropped_classes: list[str]
    class_subset: list[int]  # evaluation scores these class indices only
    bad_files: list[dict[str, Any]]  # images left out (data.skip_bad)
    overlaps: int  # images found in two splits
    unlabeled_source: str  # data.unlabeled: where the unlabeled stream's other images came from
    file_sizes: dict[str, str]  # per split, a digest of every image's path and size (a resumed run checks it)


@dataclass
class SplitManifest:
    """Which image goes where. Paths are relative to ``root``; never pickled."""

    root: str
    classes: list[str]
    labeled: list[Item]
    unlabeled: list[Item]
    val: list[Item]
    test: list[Item]
    info: SplitInfo = field(default_factory=lambda: SplitInfo())

    def path(self, rel: str) -> Path:
        return Path(self.root).expanduser() / rel

    def split(self, name: str) -> list[Item]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose labeled, unlabeled, val or test")
        return getattr(self, name)

    def save(self, path: str | Path) -> None:
        """Write the manifest as JSON, atomically (a reader never sees half a file)."""
        text = json.dumps(asdict(self), indent=1)
        write_file_atomic(path, lambda p: p.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> SplitManifest:
        """Read a manifest and check it: unique class names, every label a valid class index."""
        try:
            data = json.loads(Path(path).read_text())
            for key in SPLITS:
                data[key] = [(str(p), int(y)) for p, y in data[key]]
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a valid split manifest ({type(err).__name__}: {err})") from None
        if len(set(manifest.classes)) != len(manifest.classes):
            raise ValueError(f"{path}: the class list repeats a name")
        for key in SPLITS:
            low = UNLABELED if key == "unlabeled" else 0
            if any(not low <= y < len(manifest.classes) for _, y in manifest.split(key)):
                raise ValueError(f"{path}: a {key} label is not an index into its {len(manifest.classes)} classes")
        return manifest

    def differences(self, other: SplitManifest) -> list[str]:
        """What differs from ``other`` in classes and split membership (the root may move)."""
        out = [] if self.classes == other.classes else ["the class list or its order"]
        for key in SPLITS:
            a, b = set(self.split(key)), set(other.split(key))
            if a != b:
                out.append(f"{key}: {len(a - b)} images added, {len(b - a)} gone")
        return out

    def size_digests(self) -> dict[str, str]:
        """Per split, a digest of each image's path and size in bytes (one ``stat`` a file, no read):
        an image replaced by another, re-encoded or truncated changes it."""
        out = {}
        for key in SPLITS:
            h = hashlib.sha256()
            for rel, _ in self.split(key):
                try:
                    size = os.stat(self.path(rel)).st_size
                except OSError:
                    size = -1
                h.update(f"{rel}\t{size}\n".encode())
            out[key] = h.hexdigest()[:16]
        return out

    def summary(self) -> str:
        return (f"{len(self.classes)} classes: {len(self.labeled)} labeled, {len(self.unlabeled)} unlabeled, "
                f"{len(self.val)} val ({self.info.get('val_source')}), {len(self.test)} test ({self.info.get('test_source')})")
