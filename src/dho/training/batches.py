"""The batches a training step consumes: images (the usual path) or frozen-backbone features.

A step draws a labeled and an unlabeled batch from endless seeded streams (1:1) and brings the
teacher's outputs for exactly those views. :class:`ImageBatches` crops images and runs (or
replays) the teacher; :class:`FeatureBatches` serves a frozen backbone: the student's features
and the teacher's outputs of every view the run will draw are computed once (the features kept
across runs with ``student.feature_cache``), so a step only trains the heads. Under
DistributedDataParallel each rank takes rows ``rank::world_size`` of every global batch, so N
processes together see what one process sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data import StreamSampler, TrainViews
from ..progress import progress as progress_bar
from ..teachers import TeacherOutput
from .features import FeatureStore

__all__ = ["Batch", "FeatureBatches", "ImageBatches", "RankSlice"]

log = logging.getLogger(__name__)

TeacherFn = Callable[[Tensor, list[str]], TeacherOutput]  # (uint8 images on the device, view keys) -> outputs


@dataclass
class Batch:
    inputs: Tensor  # uint8 images [B, 3, S, S], or features [B, D] for a frozen backbone; labeled rows first
    labels: Tensor  # [num_labeled]
    num_labeled: int
    teacher: TeacherOutput | None  # [B, D_t] features and [B, C] logits, or None when the method needs none


class RankSlice:
    """The rows ``rank::world_size`` of every batch of a stream sampler (the whole batch for one process)."""

    def __init__(self, sampler: StreamSampler, rank: int = 0, world_size: int = 1) -> None:
        if sampler.batch_size % world_size:
            raise ValueError(f"batch size {sampler.batch_size} is not divisible by {world_size} processes")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def tensors(self) -> Iterator[Tensor]:
        """Batches as LongTensors [batch_size / world_size, 2] of (index, pass) rows."""
        for batch in self.sampler.tensors():
            yield batch[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.tensors():
            yield [tuple(pair) for pair in batch.tolist()]


def _streams(views: dict[str, TrainViews], batch_size: int, seed: int, rank: int, world_size: int,
             start: int = 0) -> dict[str, RankSlice]:
    return {name: RankSlice(StreamSampler(len(v), batch_size, seed, name, start_batch=start), rank, world_size)
            for name, v in views.items()}


class ImageBatches:
    """Crops of the labeled and/or unlabeled stream, moved to ``device`` as uint8, with teacher outputs.
    ``start`` is the first step's index (a resumed run): the streams skip the batches before it."""

    def __init__(self, views: dict[str, TrainViews], batch_size: int, seed: int, device: torch.device,
                 teacher_fn: TeacherFn | None, workers: int = 0, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        samplers = _streams(views, batch_size, seed, rank, world_size, start)
        on_host = all(v.store.image(0).device.type == "cpu" for v in views.values() if len(v))
        self.loaders = {name: iter(DataLoader(views[name], batch_sampler=s, num_workers=workers,
                                              persistent_workers=workers > 0, pin_memory=device.type == "cuda" and on_host))
                        for name, s in samplers.items()}
        self.device, self.teacher_fn = device, teacher_fn

    def __iter__(self) -> ImageBatches:
        return self

    def __next__(self) -> Batch:
        parts, keys, labels = [], [], torch.empty(0, dtype=torch.long)
        for name, loader in self.loaders.items():
            images, y, k = next(loader)
            if name == "labeled":
                labels = y
            parts.append(images)
            keys += k
        images = torch.cat(parts).to(self.device, non_blocking=True)  # [B_l + B_u, 3, S, S] uint8
        teacher = self.teacher_fn(images, keys) if self.teacher_fn is not None else None
        return Batch(images, labels.to(self.device, non_blocking=True), len(labels), teacher)


class FeatureBatches:
    """Heads-only training: features of a frozen backbone, and the teacher's outputs, per planned view.

    ``plan`` lists the (index, view) pairs each stream will draw (:func:`dho.training.plan.planned_views`);
    their crops are made once, embedded by ``backbone`` (eval mode, no grad) and paired with the
    teacher's outputs, so every step is a gather of rows plus the heads' forward and backward.
    """

    def __init__(self, views: dict[str, TrainViews], plan: dict[str, list[tuple[int, int]]], batch_size: int, seed: int,
                 device: torch.device, embed: Callable[[Tensor], Tensor], teacher_fn: TeacherFn | None,
                 rank: int = 0, world_size: int = 1, chunk: int = 256, progress: bool = False, start: int = 0,
                 kept: FeatureStore | None = None) -> None:
        self.samplers = {name: s.tensors() for name, s in _streams(views, batch_size, seed, rank, world_size, start).items()}
        self.num_views = {name: v.num_views for name, v in views.items()}
        self.labels = {name: v.store.labels.to(device) for name, v in views.items()}
        self.device = device
        self.rows: dict[str, Tensor] = {}  # per stream: [n, views] -> row of the tables below
        feats, t_feats, t_logits = [], [], []
        offset = embedded = 0
        for name, pairs in plan.items():
            index = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
            table = torch.full((len(views[name]), int(index[:, 1].max()) + 1 if len(pairs) else 1), -1, dtype=torch.long)
            table[index[:, 0], index[:, 1]] = torch.arange(offset, offset + len(pairs))
            self.rows[name] = table.to(device)
            offset += len(pairs)
            for lo in progress_bar(range(0, len(pairs), chunk), desc=f"features {name}", enabled=progress, leave=False):
                items = [views[name][(i, v)] for i, v in pairs[lo:lo + chunk]]
                images = torch.stack([im for im, _, _ in items]).to(device)
                if kept is None:
                    feats.append(embed(images))
                    embedded += len(images)
                else:  # features kept by earlier runs read back; rank 0 keeps the new ones
                    z, n = kept.embed(images, [k for _, _, k in items], embed, write=rank == 0)
                    feats.append(z)
                    embedded += n
                if teacher_fn is not None:
                    out = teacher_fn(images, [k for _, _, k in items])
                    t_feats.append(out.features)
                    t_logits.append(out.logits)
        if kept is not None:
            kept.save()
        self.features = torch.cat(feats)  # [R, D]
        self.teacher = TeacherOutput(torch.cat(t_feats), torch.cat(t_logits)) if teacher_fn is not None else None
        log.info("heads-only: %d views, %d embedded now, %d features each%s", len(self.features), embedded,
                 self.features.shape[1], f" (kept in {kept.path})" if kept is not None else "")

    def __iter__(self) -> FeatureBatches:
        return self

    def __next__(self) -> Batch:
        rows, labels = [], torch.empty(0, dtype=torch.long, device=self.device)
        for name, sampler in self.samplers.items():
            pairs = next(sampler).to(self.device)  # [b, 2] (index, pass)
            index, passes = pairs[:, 0], pairs[:, 1]
            num_views = self.num_views[name]
            views = passes % num_views if num_views else passes
            rows.append(self.rows[name][index, views])
            if name == "labeled":
                labels = self.labels[name][index]
        index = torch.cat(rows)
        teacher = self.teacher and TeacherOutput(self.teacher.features.index_select(0, index),
                                                 self.teacher.logits.index_select(0, index))
        return Batch(self.features.index_select(0, index), labels, len(labels), teacher)
