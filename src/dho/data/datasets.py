"""Datasets over a split manifest: decoded images, replayable training views, eval views,
and the endless seeded batch streams that feed the labeled and unlabeled sides of a step."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..progress import progress as progress_bar
from .decode import BadImage
from .images import apply_crop, crop_params, decode_image, eval_view, shrink
from .manifest import Item, SplitManifest

__all__ = ["EvalViews", "ImageStore", "StreamSampler", "TrainViews", "eval_key", "kept_bytes", "view_key"]


# The names of a sample's views in teacher caches and stores: the one key format of the package.
def view_key(seed: int, sample_id: str, view: int) -> str:
    """A training view: the crop of ``sample_id`` drawn from (``seed``, ``view``)."""
    return f"{seed}/{sample_id}#{view}"


def eval_key(size: int, sample_id: str) -> str:
    """An evaluation view: the resized centre crop of ``sample_id`` at ``size`` pixels."""
    return f"eval{size}/{sample_id}"


class ImageStore:
    """The images of one split as uint8 [3, H, W] tensors, decoded once (``in_memory``) or on demand."""

    def __init__(self, manifest: SplitManifest, items: list[Item], in_memory: bool = True, progress: bool = False,
                 desc: str = "decode", max_side: int | None = None) -> None:
        self.manifest, self.max_side = manifest, max_side  # max_side: shorter sides brought down to it
        self.items = list(items)
        self.labels = torch.tensor([y for _, y in self.items], dtype=torch.long)
        self._images: list[Tensor] | None = None
        if in_memory:
            self._images = [self._decode(p) for p, _ in progress_bar(self.items, desc=desc, enabled=progress, leave=False)]

    def _decode(self, rel: str) -> Tensor:
        try:
            return shrink(decode_image(self.manifest.path(rel)), self.max_side)
        except BadImage as err:
            folder = self.manifest.info.get("format", "folder") == "folder"  # `dho data check` reads folders
            check = f"list every bad file with `dho data check {self.manifest.root}`, or " if folder else ""
            raise BadImage(err.kind, f"{err}; {check}train with --skip-bad (data.skip_bad=true)") from None

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device: torch.device) -> ImageStore:
        """Move the decoded images to ``device`` (crops then run there, e.g. on the GPU)."""
        if self._images is None:
            raise ValueError("only an in-memory image store can move to a device")
        self._images = [im.to(device, non_blocking=True) for im in self._images]
        return self

    def image(self, index: int) -> Tensor:
        if self._images is not None:
            return self._images[index]
        return self._decode(self.items[index][0])

    def sample_id(self, index: int) -> str:
        return self.items[index][0]


def kept_bytes(manifest: SplitManifest, items: list[Item], max_side: int | None, sample: int = 256) -> int:
    """An estimate of the memory :class:`ImageStore` takes to keep ``items`` decoded (uint8 RGB,
    shorter sides brought down to ``max_side``), from the headers of an even sample of them."""
    from PIL import Image

    if not items:
        return 0
    chosen = items[:: max(1, len(items) // sample)][:sample]
    total = 0
    for rel, _ in chosen:
        try:
            with Image.open(manifest.path(rel)) as image:
                w, h = image.size
        except OSError:  # a bad file: the decode reports it
            continue
        scale = min(1.0, max_side / min(w, h)) if max_side else 1.0
        total += 3 * round(w * scale) * round(h * scale)
    return total * len(items) // len(chosen)


class TrainViews(Dataset):
    """``views[(index, pass)]`` -> (uint8 [3, size, size] crop, label, view key).

    The crop is a pure function of (seed, sample id, view) with view = pass, or pass % num_views
    when a finite number of views per image is wanted (so teacher outputs can be replayed). The
    view key (:func:`view_key`) names it for caches.
    """

    def __init__(self, store: ImageStore, size: int, scale: tuple[float, float], seed: int, num_views: int | None = None) -> None:
        self.store, self.size, self.seed, self.num_views = store, size, seed, num_views
        self.scale = cast("tuple[float, float]", tuple(scale))

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, str]:
        index, epoch = key
        view = epoch % self.num_views if self.num_views else epoch
        image, sample_id = self.store.image(index), self.store.sample_id(index)
        params = crop_params(self.seed, sample_id, view, image.shape[1], image.shape[2], self.scale)
        return apply_crop(image, params, self.size), self.store.labels[index], view_key(self.seed, sample_id, view)


class EvalViews(Dataset):
    """``views[index]`` -> (uint8 [3, size, size] resized centre crop, label)."""

    def __init__(self, store: ImageStore, size: int) -> None:
        self.store, self.size = store, size

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return eval_view(self.store.image(index), self.size), self.store.labels[index]


class StreamSampler:
    """An endless stream of batches of (index, pass) keys.

    Pass p is a permutation of range(n) drawn from (seed, name, p); batches run across pass
    boundaries, so every batch is full even when n < batch_size (the labeled set at 1 shot).
    ``start_batch`` skips ahead deterministically (resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int, name: str, start_batch: int = 0) -> None:
        if n == 0:
            raise ValueError(f"the {name} stream is empty")
        self.n, self.batch_size, self.seed, self.name, self.start_batch = n, batch_size, seed, name, start_batch

    def _permutation(self, p: int) -> Tensor:
        digest = hashlib.blake2b(f"{self.seed}|{self.name}|{p}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randperm(self.n, generator=gen)

    def tensors(self) -> Iterator[Tensor]:
        """The same stream as LongTensors [batch_size, 2] of (index, pass) rows."""
        position = self.start_batch * self.batch_size
        p, offset = divmod(position, self.n)
        order = self._permutation(p)
        while True:
            parts, need = [], self.batch_size
            while need:
                if offset == self.n:
                    p, offset, order = p + 1, 0, self._permutation(p + 1)
                take = min(need, self.n - offset)
                idx = order[offset:offset + take]
                parts.append(torch.stack([idx, torch.full_like(idx, p)], dim=1))
                offset, need = offset + take, need - take
            yield parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.tensors():
            yield [tuple(pair) for pair in batch.tolist()]
