"""The few-shot teacher ("DHO-F"): any zero-shot teacher plus a Tip-Adapter(-F) cache model
fitted on the labeled shots, with (a, b) searched on the validation split, or read from a
Tip-Adapter-F teacher file of the DHO authors (``teacher.adapter_file``).

The adapter works on the base teacher's normalised features and zero-shot logits, so it runs on
cached outputs (:class:`~dho.teachers.cache.TeacherCache` keeps the base teacher's outputs). One
exception: Tip-Adapter's keys average the shots' un-normalised features over their views
(``teacher.adapter_keys=raw_mean``); a cache keeps only normalised ones, so those views go through
the base teacher itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor

from ..config import RunConfig
from ..data import EvalViews, ImageStore, SplitManifest, TrainViews
from ..data.datasets import eval_key
from ..device import autocast
from ..files import load_torch_file
from .base import Teacher, TeacherOutput
from .cache import TeacherCache
from .tip_adapter import TipAdapter, fit_tip_adapter

__all__ = ["ADAPTER_SEED_OFFSET", "FewShotTeacher", "adapter_view_indices", "fit_fewshot_teacher",
           "load_tip_adapter_file"]

log = logging.getLogger(__name__)

ADAPTER_SEED_OFFSET = 100_003  # the adapter's augmented views of the shots use their own crop seed


class FewShotTeacher(Teacher):
    """``base`` with logits = zero-shot logits + Tip-Adapter's cache term. Frozen like any teacher.

    The zero-shot logits are the base teacher's, or cos(f, w_c) / zeta with the adapter's own
    class embeddings w [C, D] when it brings them (an imported teacher file).
    """

    def __init__(self, base: Teacher, adapter: TipAdapter) -> None:
        super().__init__(base.preprocess, zeta=base.zeta)
        self.base = base
        self.adapter = adapter
        self.id = f"{base.id}+tip-adapter{'-f' if adapter.fine_tuned else ''}"
        self.classnames, self.templates = list(base.classnames), tuple(base.templates)
        own = adapter.class_embeddings
        self.class_embeddings = base.class_embeddings if own is None else own.float().to(base.class_embeddings.device)
        self.freeze()

    def adapt(self, out: TeacherOutput) -> TeacherOutput:
        """Base outputs (e.g. replayed from a cache) -> few-shot outputs."""
        device = out.features.device
        if self.adapter.keys.device != device:  # once, when the teacher meets its first batch there
            own = self.adapter.class_embeddings
            self.adapter = replace(self.adapter, keys=self.adapter.keys.to(device), values=self.adapter.values.to(device),
                                   class_embeddings=None if own is None else own.to(device))
        feats = out.features.float()
        own = self.adapter.class_embeddings
        zero_shot = out.logits.float() if own is None else feats @ own.float().t() / self.zeta
        return TeacherOutput(out.features, self.adapter.logits(feats, zero_shot))

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutput:
        return self.adapt(self.base(images))

    def describe(self) -> dict:
        return {**self.base.describe(), "id": self.id, "adapter": self.adapter.describe()}


def adapter_view_indices(cfg: RunConfig) -> range:
    """The views of each shot (crop seed: run seed + ADAPTER_SEED_OFFSET) whose base-teacher
    outputs the few-shot teacher reads: 0 .. adapter_views - 1 for the keys, then, for Tip-Adapter-F
    with ``adapter_train_views=fresh``, one more per epoch; none when it comes from a file."""
    t = cfg.teacher
    if cfg.adapter == "none" or t.adapter_file:
        return range(0)
    fresh = cfg.adapter == "tip-f" and t.adapter_train_views == "fresh"
    return range(t.adapter_views + (t.adapter_epochs if fresh else 0))


def _outputs(teacher: Teacher, cache: TeacherCache | None, images: Tensor, keys: list[str]) -> TeacherOutput:
    return cache.outputs(images, keys) if cache is not None else teacher(images)


Items = Iterable[tuple[Tensor, str]]  # (uint8 image [3, S, S], view key), made as they are read


def _chunks(items: Items, batch: int) -> Iterator[list[tuple[Tensor, str]]]:
    items = iter(items)
    while chunk := list(islice(items, batch)):
        yield chunk


def _shot_views(views: TrainViews, indices: range, n: int) -> Items:
    """Views ``indices`` of the n shots, view-major: [(crop, key)] for (view 0, shot 0), (0, 1), ..."""
    return ((image, key) for view in indices for image, _, key in (views[(i, view)] for i in range(n)))


@torch.no_grad()
def _batched(teacher: Teacher, cache: TeacherCache | None, items: Items, batch: int = 128) -> TeacherOutput:
    device = teacher.class_embeddings.device
    parts = [_outputs(teacher, cache, torch.stack([im for im, _ in chunk]).to(device), [k for _, k in chunk])
             for chunk in _chunks(items, batch)]
    return TeacherOutput(torch.cat([p.features for p in parts]).cpu(), torch.cat([p.logits for p in parts]).cpu())


@torch.no_grad()
def _raw_features(teacher: Teacher, items: Items, batch: int = 128) -> Tensor:
    """The base teacher's image features before L2 normalisation, [len(items), D] on the CPU, at
    the precision of its forward (``teacher.autocast_dtype``)."""
    device = teacher.class_embeddings.device
    parts = []
    for chunk in _chunks(items, batch):
        with autocast(device, getattr(teacher, "autocast_dtype", None)):
            parts.append(teacher.encode_image(teacher.preprocess(torch.stack([im for im, _ in chunk]).to(device))).float().cpu())
    return torch.cat(parts)


def _validation(base: Teacher, cache: TeacherCache | None, manifest: SplitManifest) -> tuple[Tensor, Tensor, Tensor] | None:
    """Validation centre crops at the teacher's input size -> (features [M, D], logits [M, C], labels [M])."""
    if not manifest.val:
        log.warning("no validation split: Tip-Adapter keeps its default a and b")
        return None
    store = ImageStore(manifest, manifest.val, in_memory=False)
    size = base.image_size
    views = EvalViews(store, size)
    out = _batched(base, cache, ((views[i][0], eval_key(size, store.sample_id(i))) for i in range(len(store))))
    return out.features, out.logits, store.labels


def fit_fewshot_teacher(cfg: RunConfig, base: Teacher, manifest: SplitManifest, view_size: int,
                        cache: TeacherCache | None = None) -> FewShotTeacher:
    """Tip-Adapter (``teacher.adapter=tip``) or Tip-Adapter-F (``tip-f``) on the labeled shots, or
    the Tip-Adapter-F teacher in ``teacher.adapter_file`` (read, not fitted).

    Views of each shot are crops replayable like training views, under their own seed
    (:func:`adapter_view_indices`). Keys: ``teacher.adapter_views`` views, combined by
    ``teacher.adapter_keys``; Tip-Adapter-F trains on a fresh view per epoch or on the key views
    (``teacher.adapter_train_views``); (a, b) searched on validation centre crops at the teacher's
    input size over ``teacher.adapter_grid``. Without validation data the grid's defaults are kept.
    """
    t = cfg.teacher
    n_classes = len(manifest.classes)
    if t.adapter_file:
        adapter = load_tip_adapter_file(t.adapter_file, n_classes, base.class_embeddings.shape[1])
        if base.zeta != 0.01:
            log.warning("teacher.zeta=%g: the file's zero-shot logits are 100 * cos, these are cos / %g", base.zeta, base.zeta)
        log.info("few-shot teacher read from %s: %s", t.adapter_file, adapter.describe())
        return FewShotTeacher(base, adapter)
    labeled = ImageStore(manifest, manifest.labeled, in_memory=True, max_side=cfg.store_side(view_size))  # as training keeps them
    n, v = len(labeled), t.adapter_views
    views = TrainViews(labeled, view_size, cfg.optim.crop_scale, seed=cfg.seed + ADAPTER_SEED_OFFSET)
    fresh = adapter_view_indices(cfg)[v:]  # Tip-Adapter-F's views, one per epoch (when adapter_train_views=fresh)
    train_out = _batched(base, cache, _shot_views(views, fresh or range(v), n))
    feats = train_out.features.view(-1, n, train_out.features.shape[-1])
    logits = train_out.logits.view(-1, n, n_classes)
    if t.adapter_keys == "raw_mean":
        key_feats = _raw_features(base, _shot_views(views, range(v), n)).view(v, n, -1)
    else:
        key_feats = _batched(base, cache, _shot_views(views, range(v), n)).features.view(v, n, -1) if fresh else feats
    val_feats, val_logits, val_labels = _validation(base, cache, manifest) or (None, None, None)
    adapter = fit_tip_adapter(feats, logits, labeled.labels, val_feats, val_logits, val_labels,
                              num_classes=n_classes, fine_tune=cfg.adapter == "tip-f", epochs=t.adapter_epochs,
                              seed=cfg.seed, key_features=key_feats, key_mean=t.adapter_keys,
                              train_views=t.adapter_train_views, grid=t.adapter_grid, dataset=cfg.data.dataset)
    log.info("few-shot teacher: %s", adapter.describe())
    return FewShotTeacher(base, adapter)


# The file's keys as read by erjui/DHO train_others.py (main): the scalars may be numpy float64.
TIP_FILE_TENSORS: tuple[str, ...] = ("adapter_weight", "cache_values", "clip_weights")
TIP_FILE_SCALARS: tuple[str, ...] = ("best_alpha", "best_beta")


def _file_scalar(path: Path, data: dict, key: str) -> float:
    """data[key] (a Python, numpy or 0-d tensor number) as a finite float."""
    value = data[key]
    try:
        value = float(value.item() if isinstance(value, Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{path}: {key} is a {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {key} is {value}")
    return value


def load_tip_adapter_file(path: str | Path, num_classes: int | None = None,
                          feature_dim: int | None = None) -> TipAdapter:
    """A Tip-Adapter-F teacher saved by the DHO authors' scripts -> a fitted :class:`TipAdapter`.

    The file is a torch dict: adapter_weight [N, D] (the fine-tuned keys), cache_values [N, C]
    (one-hot labels), clip_weights [D, C] (the class text embeddings), best_alpha, best_beta
    (cache_keys, the keys before fine-tuning, is not needed). Their logits on normalised features f
    [B, D] are ``100 * f @ clip_weights + best_alpha * exp(-(best_beta - best_beta * f @
    adapter_weight.T)) @ cache_values``, so keys = adapter_weight, values = cache_values,
    a = best_alpha, b = best_beta, class_embeddings = clip_weights.T [C, D] (the zero-shot head,
    used as stored). ``num_classes`` and ``feature_dim``: what the run's classes and base teacher
    need; a mismatch, a missing key or a wrong shape is a one-line ValueError.
    """
    path = Path(path).expanduser()
    data = load_torch_file(path)
    missing = [k for k in TIP_FILE_TENSORS + TIP_FILE_SCALARS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a Tip-Adapter-F teacher file")
    for key in TIP_FILE_TENSORS:
        if not isinstance(data[key], Tensor) or data[key].ndim != 2:
            raise ValueError(f"{path}: {key} must be a 2-d tensor, got {getattr(data[key], 'shape', type(data[key]).__name__)}")
    keys, values, text = (data[k].detach().float() for k in TIP_FILE_TENSORS)
    (n, d), (n_values, c) = keys.shape, values.shape
    if n_values != n or tuple(text.shape) != (d, c):
        raise ValueError(f"{path}: adapter_weight {tuple(keys.shape)} [N, D], cache_values {tuple(values.shape)} [N, C] "
                         f"and clip_weights {tuple(text.shape)} [D, C] do not fit together")
    if num_classes is not None and c != num_classes:
        raise ValueError(f"{path} is a teacher for {c} classes, this run has {num_classes}")
    if feature_dim is not None and d != feature_dim:
        raise ValueError(f"{path} works on {d}-d image features, the base teacher gives {feature_dim}-d: "
                         "use the CLIP model the file was fitted with")
    a, b = (_file_scalar(path, data, k) for k in TIP_FILE_SCALARS)
    return TipAdapter(keys.contiguous(), values.contiguous(), a, b, fine_tuned=True,
                      class_embeddings=text.t().contiguous())
