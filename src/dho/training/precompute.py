"""Teacher outputs computed ahead of training, in parallel, for every view a set of runs will draw.

Views are pure functions of (seed, sample id, view), so the requests can be listed from the run
configs alone (:func:`dho.training.plan.planned_views`), computed in worker processes of one thread each
and stored once (:class:`~dho.teachers.store.TeacherStore`). ``dho cache-teacher`` does this for
one run config, ``dho sweep`` for a grid; training replays the store (``teacher.cache=DIR``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from concurrent.futures import Executor
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import DataConfig, RunConfig
from ..data.datasets import eval_key, view_key
from ..data.images import apply_crop, crop_params, decode_image, eval_view, shrink
from ..data.manifest import SplitManifest
from ..data.splits import splits_for
from ..device import free_cores, precision_name, resolve_precision
from ..methods import METHOD_SPECS
from ..progress import progress as progress_bar
from ..teachers import Teacher, TeacherOutput, build_teacher, resolve_teacher
from ..teachers.cache import TeacherCache
from ..teachers.fewshot import ADAPTER_SEED_OFFSET, adapter_view_indices
from .plan import planned_views, training_view_size
from .pool import executor, shards

__all__ = ["base_teacher_config", "cache_teacher", "fill_teacher_cache", "store_info", "store_path", "teacher_requests"]

log = logging.getLogger(__name__)

# A request is (key, relative path, crop seed, view) for a training view or (key, path, None, None)
# for a centre crop at the teacher's size; workers rebuild the pixels from it.
Request = tuple[str, str, "int | None", "int | None"]


@functools.lru_cache(maxsize=64)
def cached_splits(data: DataConfig) -> SplitManifest:
    """Split manifests are pure functions of the (frozen, hashable) data config; reuse them."""
    return splits_for(data)


def teacher_requests(cfgs: list[RunConfig], teacher: Teacher, eval_splits: bool = True) -> dict[str, Request]:
    """Every view the runs draw (training streams, few-shot adapter views) and, with ``eval_splits``,
    the validation and test centre crops at the teacher's input size."""
    needed: dict[str, Request] = {}
    for cfg in cfgs:
        manifest = cached_splits(cfg.data)
        if METHOD_SPECS[cfg.loss.method].teacher:
            for split, keys in planned_views(cfg, manifest).items():
                items = manifest.split(split)
                for i, v in keys:
                    path = items[i][0]
                    key = view_key(cfg.seed, path, v)
                    needed[key] = (key, path, cfg.seed, v)
        if cfg.adapter != "none":
            seed = cfg.seed + ADAPTER_SEED_OFFSET
            for path, _ in manifest.labeled:
                for v in adapter_view_indices(cfg):
                    needed[view_key(seed, path, v)] = (view_key(seed, path, v), path, seed, v)
        if eval_splits:
            for path, _ in (*manifest.val, *manifest.test):
                key = eval_key(teacher.image_size, path)
                needed[key] = (key, path, None, None)
    return needed


def teacher_job(cfg: RunConfig, requests: list[Request]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Worker: rebuild the requested views' pixels and run the base teacher on them."""
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset)
    teacher.autocast_dtype = resolve_precision(cfg.precision, torch.device("cpu"))
    view_size = training_view_size(cfg, teacher.image_size)
    side = cfg.store_side(view_size)
    keys, feats, logits = [], [], []
    for start in range(0, len(requests), 128):
        chunk = requests[start:start + 128]
        images = []
        for _, path, seed, view in chunk:
            image = decode_image(manifest.path(path))
            if seed is None:
                images.append(eval_view(image, teacher.image_size))
            else:
                assert view is not None  # a training view's request has both a crop seed and a view
                image = shrink(image, side)  # as the training streams keep it
                params = crop_params(seed, path, view, image.shape[1], image.shape[2], cfg.optim.crop_scale)
                images.append(apply_crop(image, params, view_size))
        by_size: dict[int, list[int]] = {}
        for j, im in enumerate(images):
            by_size.setdefault(im.shape[-1], []).append(j)
        for idx in by_size.values():
            out = teacher(torch.stack([images[j] for j in idx]))
            keys += [chunk[j][0] for j in idx]
            feats.append(out.features)
            logits.append(out.logits)
    return keys, torch.cat(feats) if feats else torch.empty(0), torch.cat(logits) if logits else torch.empty(0)


def base_teacher_config(cfg: RunConfig) -> RunConfig:
    """The config with the few-shot adapter removed: whose outputs a store holds."""
    return cfg.override({"teacher.adapter": "none", "teacher.cache": None})


def store_info(cfg: RunConfig, teacher: Teacher) -> dict:
    """What makes stored views reusable: the base teacher and the precision it ran at (on the CPU,
    where stores are computed), the view size, crop scale and data root."""
    fields = {k: v for k, v in asdict(cfg.teacher).items() if not k.startswith("adapter") and k != "cache"}
    view_size = training_view_size(cfg, teacher.image_size)
    return {"teacher": fields, "view_size": view_size, "root": cfg.data.root, "crop_scale": list(cfg.optim.crop_scale),
            "store_side": cfg.store_side(view_size),
            "teacher_precision": precision_name(resolve_precision(cfg.precision, torch.device("cpu")))}


def store_path(out: Path, cfg: RunConfig) -> Path:
    """A sweep's store for the runs that share the base teacher, view size, crop scale and data root."""
    fields = {k: v for k, v in asdict(cfg.teacher).items() if not k.startswith("adapter") and k != "cache"}
    ident = json.dumps({"teacher": fields, "view_size": cfg.data.view_size, "student_size": cfg.student.image_size,
                        "root": cfg.data.root, "crop_scale": list(cfg.optim.crop_scale), "precision": cfg.precision},
                       sort_keys=True)
    return out / "teacher_cache" / hashlib.sha256(ident.encode()).hexdigest()[:16]


SHARD_OUTPUTS = 2048  # teacher outputs per worker job: progress every few minutes at most, each job's set-up amortised


def fill_teacher_cache(cfgs: list[RunConfig], path: Path, pool: Executor, workers: int, *, dtype: str = "float32",
                       topk: int | None = None, eval_splits: bool = True, progress: bool = False,
                       shard: tuple[int, int] = (0, 1)) -> TeacherCache:
    """Compute the base teacher's outputs for every view ``cfgs`` need that the store at ``path``
    lacks, append them there, and return the cache over it. ``shard=(i, n)``: of every n-th view
    requested, from the i-th, those the store lacks, so that n processes or nodes fill one store."""
    base = base_teacher_config(cfgs[0])
    teacher = build_teacher(base.teacher, splits_for(base.data).classes, base.data.dataset)
    cache = TeacherCache.load(teacher, path) if (path / "meta.json").is_file() else TeacherCache(teacher)
    info = store_info(base, teacher)
    if cache.store is not None and cache.store.meta["info"] and cache.store.meta["info"] != info:
        raise ValueError(f"{path} holds views of another setup: {cache.store.meta['info']}")
    # the shard is cut from every request, so it does not depend on what the other shards stored by now
    ours = list(teacher_requests(cfgs, teacher, eval_splits).items())[shard[0]::shard[1]]
    missing = [r for key, r in ours if key not in cache]
    part = f" (shard {shard[0]} of {shard[1]})" if shard[1] > 1 else ""
    log.info("teacher store %s: %d outputs stored, %d to compute%s", path, len(cache), len(missing), part)
    jobs = workers * max(1, math.ceil(len(missing) / (SHARD_OUTPUTS * workers)))
    futures = [pool.submit(teacher_job, base, shard) for shard in shards(missing, jobs) if shard]
    bar = progress_bar(total=len(missing), desc="teacher store", enabled=progress and bool(missing))
    for future in futures:  # in order: the store's order does not depend on timing
        keys, feats, logits = future.result()
        cache.update(keys, TeacherOutput(feats, logits))
        bar.update(len(keys))
    bar.close()
    cache.save(path, dtype=dtype, topk=topk, info=info)
    return cache


def cache_teacher(cfg: RunConfig, out: str | Path, *, dtype: str = "float16", topk: int | None = None,
                  workers: int | None = None, eval_splits: bool = True, progress: bool = False,
                  shard: tuple[int, int] = (0, 1)) -> TeacherCache:
    """``dho cache-teacher``: the store of every teacher output one training run of ``cfg`` draws
    (``shard``: this process's part of it, see :func:`fill_teacher_cache`)."""
    cfg = resolve_teacher(cfg)
    workers = workers or free_cores()
    with executor(workers) as pool:
        return fill_teacher_cache([cfg], Path(out), pool, workers, dtype=dtype, topk=topk, eval_splits=eval_splits,
                                  progress=progress, shard=shard)
