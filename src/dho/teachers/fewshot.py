"""The few-shot teacher ("DHO-F"): any zero-shot teacher plus a Tip-Adapter(-F) cache model
fitted on the labeled shots, with (a, b) searched on the validation split.

The adapter works on the base teacher's normalised features and zero-shot logits, so it runs on
cached outputs (:class:`~dho.teachers.cache.TeacherCache` keeps the base teacher's outputs).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import Tensor

from ..config import RunConfig
from ..data import EvalViews, ImageStore, SplitManifest, TrainViews
from .base import Teacher, TeacherOutput
from .cache import TeacherCache
from .tip_adapter import TipAdapter, fit_tip_adapter

__all__ = ["ADAPTER_SEED_OFFSET", "FewShotTeacher", "eval_key", "fit_fewshot_teacher"]

log = logging.getLogger(__name__)

ADAPTER_SEED_OFFSET = 100_003  # the adapter's augmented views of the shots use their own crop seed


class FewShotTeacher(Teacher):
    """``base`` with logits = zero-shot logits + Tip-Adapter's cache term. Frozen like any teacher."""

    def __init__(self, base: Teacher, adapter: TipAdapter) -> None:
        super().__init__(base.preprocess, zeta=base.zeta)
        self.base = base
        self.adapter = adapter
        self.id = f"{base.id}+tip-adapter{'-f' if adapter.fine_tuned else ''}"
        self.classnames, self.templates = list(base.classnames), tuple(base.templates)
        self.class_embeddings = base.class_embeddings
        self.freeze()

    def adapt(self, out: TeacherOutput) -> TeacherOutput:
        """Base outputs (e.g. replayed from a cache) -> few-shot outputs."""
        device = out.features.device
        if self.adapter.keys.device != device:  # once, when the teacher meets its first batch there
            self.adapter = replace(self.adapter, keys=self.adapter.keys.to(device), values=self.adapter.values.to(device))
        return TeacherOutput(out.features, self.adapter.logits(out.features.float(), out.logits.float()))

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutput:
        return self.adapt(self.base(images))

    def describe(self) -> dict:
        return {**self.base.describe(), "id": self.id, "adapter": self.adapter.describe()}


def eval_key(size: int, sample_id: str) -> str:
    """Cache key of an evaluation view (resized centre crop) of a sample."""
    return f"eval{size}/{sample_id}"


def _outputs(teacher: Teacher, cache: TeacherCache | None, images: Tensor, keys: list[str]) -> TeacherOutput:
    return cache.outputs(images, keys) if cache is not None else teacher(images)


@torch.no_grad()
def _batched(teacher: Teacher, cache: TeacherCache | None, items: list[tuple[Tensor, str]], batch: int = 128) -> TeacherOutput:
    device = teacher.class_embeddings.device
    parts = [_outputs(teacher, cache, torch.stack([im for im, _ in items[i:i + batch]]).to(device),
                      [k for _, k in items[i:i + batch]]) for i in range(0, len(items), batch)]
    return TeacherOutput(torch.cat([p.features for p in parts]).cpu(), torch.cat([p.logits for p in parts]).cpu())


def fit_fewshot_teacher(cfg: RunConfig, base: Teacher, manifest: SplitManifest, view_size: int,
                        cache: TeacherCache | None = None) -> FewShotTeacher:
    """Tip-Adapter (``teacher.adapter=tip``) or Tip-Adapter-F (``tip-f``) on the labeled shots.

    Keys: the base teacher's features of ``teacher.adapter_views`` augmented views of each shot
    (crops replayable like training views, under their own seed); (a, b) searched on validation
    centre crops at the teacher's input size. Without validation data, Tip-Adapter's defaults a = b = 1
    are kept (scaled to the zero-shot logits' spread as the search grid is).
    """
    t = cfg.teacher
    labeled = ImageStore(manifest, manifest.labeled, in_memory=True)
    views = TrainViews(labeled, view_size, cfg.optim.crop_scale, seed=cfg.seed + ADAPTER_SEED_OFFSET, num_views=t.adapter_views)
    items = [(image, key) for v in range(t.adapter_views) for image, _, key in (views[(i, v)] for i in range(len(labeled)))]
    train_out = _batched(base, cache, items)
    n, num_classes = len(labeled), len(manifest.classes)
    feats = train_out.features.view(t.adapter_views, n, -1)
    logits = train_out.logits.view(t.adapter_views, n, num_classes)
    if manifest.val:
        val_store = ImageStore(manifest, manifest.val, in_memory=False)
        size = base.image_size
        val_views = EvalViews(val_store, size)
        val_out = _batched(base, cache, [(val_views[i][0], eval_key(size, val_store.sample_id(i))) for i in range(len(val_store))])
        val = (val_out.features, val_out.logits, val_store.labels)
    else:
        log.warning("no validation split: Tip-Adapter keeps its default a and b")
        val = None
    adapter = fit_tip_adapter(feats, logits, labeled.labels, *(val or (None, None, None)), num_classes=num_classes,
                              fine_tune=t.adapter == "tip-f", epochs=t.adapter_epochs, seed=cfg.seed)
    log.info("few-shot teacher: %s", adapter.describe())
    return FewShotTeacher(base, adapter)
