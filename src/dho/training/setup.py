"""Everything a training run settles before its first step, apart from the method itself: the
process and device, the run directory and a resumed state, the split, the teacher store, the
data streams and the backward strategy. :func:`dho.loop.train` calls these in order."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ..backbones import clip_student, student_text_embeddings
from ..config import RunConfig, load_config
from ..data import ImageStore, SplitManifest, TrainViews
from ..data.datasets import kept_bytes
from ..data.duplicates import check_overlaps
from ..data.splits import splits_for
from ..device import free_cores, precision_name, resolve_precision, seed_everything
from ..gradients import pcgrad_backward
from ..methods import METHOD_SPECS, MethodSpec
from ..students import DualHeadStudent, build_student
from ..teachers import Teacher
from ..teachers.cache import TeacherCache
from ..teachers.fewshot import FewShotTeacher
from . import distributed
from .batches import FeatureBatches, ImageBatches, TeacherFn
from .distributed import DistContext
from .features import FeatureStore
from .plan import planned_views, training_view_size
from .rundir import RunDir
from .state import TrainState, load_state

__all__ = ["Backward", "Started", "build_streams", "choose_backward", "load_splits", "method_student", "resume_config", "start_run",
           "teacher_store"]

log = logging.getLogger(__name__)

Backward = Callable[[dict[str, Tensor]], None]  # the step's loss terms -> gradients on the parameters


@dataclass
class Started:
    """A run that has its process, device, directory and (when resuming) its saved state."""

    ctx: DistContext
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype, None for fp32
    dir: RunDir
    resumed: TrainState | None

    def resumed_step(self) -> int | None:
        """The step a resumed run picks up after (None for a fresh run)."""
        return self.resumed.step if self.resumed is not None else None

    def shows(self, progress: bool) -> bool:
        """Progress bars asked for, on the one process that draws them."""
        return progress and self.ctx.is_main


def start_run(cfg: RunConfig, resume: bool, overwrite: bool = False) -> Started:
    """Join the process group, lock the run directory, find the state to resume (checked against
    ``cfg``) or check that a fresh run replaces no other (unless ``overwrite``), write config.yaml,
    set the threads and the precision, and seed every generator."""
    ctx, device = distributed.init_distributed(cfg.device)
    run = RunDir(cfg.out, writes=ctx.is_main)
    run.lock()
    try:
        return _start(cfg, run, ctx, device, resume, overwrite)
    except BaseException:
        run.release()
        raise


def _start(cfg: RunConfig, run: RunDir, ctx: DistContext, device: torch.device, resume: bool, overwrite: bool) -> Started:
    if not resume:
        run.check_fresh(overwrite)
    resumed = _resume_state(run.path, resume)
    if resumed is not None:
        resumed.check_config(cfg.to_dict())
    run.start(cfg, fresh=resumed is None)
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, free_cores() // local_procs))
    amp = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    return Started(ctx, device, amp, run, resumed)


def resume_config(run_dir: Path, overrides: Sequence[str]) -> RunConfig:
    """The config a run continues with: its config.yaml, else the one saved with its training state."""
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml", list(overrides))
    state = load_state(run_dir / "state")
    if state is None:
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no config.yaml and no training state")
    log.warning("%s is missing: resuming with the config saved in %s", run_dir / "config.yaml", state.path)
    return RunConfig.from_dict(state.skeleton["config"]).override(list(overrides))


def _resume_state(run_dir: Path, resume: bool) -> TrainState | None:
    if not resume:
        return None
    state = load_state(run_dir / "state")
    if state is None:
        finished = " (the run finished; its student is checkpoint/)" if (run_dir / "results.json").is_file() else ""
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no training state under {run_dir / 'state'}{finished}")
    return state


def load_splits(cfg: RunConfig, run: Started) -> SplitManifest:
    """The run's split, checked for images in two splits; a resumed run must see exactly the split it
    started with (its saved splits.json: the same files, of the same sizes). Writes splits.json and,
    when images were left out, bad_files.json."""
    manifest = splits_for(cfg.data)
    sizes = manifest.size_digests()
    if run.resumed is not None:
        saved = SplitManifest.load(run.dir.path / "splits.json")
        changed = manifest.differences(saved) or [
            f"{key}: an image's content (its size) changed" for key, digest in saved.info.get("file_sizes", sizes).items()
            if sizes.get(key) != digest]
        if changed:
            raise ValueError(f"the dataset changed since {run.dir.path} started ({'; '.join(changed)}); "
                             "a resumed run needs the same files")
        run.resumed.check_classes(manifest.classes)
    check_overlaps(manifest, cfg.data.duplicates)
    run.dir.write("splits.json", replace(manifest, info={**manifest.info, "file_sizes": sizes}).save)
    if manifest.info.get("bad_files"):
        run.dir.write_json("bad_files.json", manifest.info["bad_files"])
    log.info("data: %s", manifest.summary())
    return manifest


def teacher_store(cfg: RunConfig, teacher: Teacher, given: TeacherCache | None) -> TeacherCache | None:
    """The cache handed in by a caller (sweeps), else the store named by ``teacher.cache`` (checked
    against this run's views and precision), else none."""
    if given is not None or not cfg.teacher.cache:
        return given
    base = teacher.base if isinstance(teacher, FewShotTeacher) else teacher
    cache = TeacherCache.load(base, cfg.teacher.cache)
    store = cache.store
    assert store is not None  # a loaded cache reads its store
    info = store.meta.get("info", {})
    view_size = training_view_size(cfg, base.image_size)
    expected = {"view_size": view_size, "crop_scale": list(cfg.optim.crop_scale),
                "store_side": cfg.store_side(view_size)}
    known = {**info, "store_side": info.get("store_side")} if "view_size" in info else info  # stores before store_side: full size
    clash = {k: (known[k], v) for k, v in expected.items() if k in known and known[k] != v}
    if clash:
        raise ValueError(f"teacher.cache={cfg.teacher.cache} was built for other views: "
                         + ", ".join(f"{k}={a} (this run: {b})" for k, (a, b) in clash.items()))
    ours = precision_name(base.autocast_dtype)
    if info.get("teacher_precision", ours) != ours:
        log.warning("teacher.cache=%s was computed at %s, this run's teacher runs at %s: replayed outputs differ "
                    "from online ones by that rounding", cfg.teacher.cache, info["teacher_precision"], ours)
    if store.meta["topk"] and cfg.adapter != "none":
        raise ValueError(f"teacher.cache={cfg.teacher.cache} keeps top-{store.meta['topk']} logits; "
                         "the few-shot teacher needs all of them (build the store without --topk)")
    log.info("teacher outputs replayed from %s (%d views, %s)", cfg.teacher.cache, len(cache), store.meta["dtype"])
    return cache


def build_streams(cfg: RunConfig, run: Started, manifest: SplitManifest, spec: MethodSpec, student: DualHeadStudent,
                  teacher_fn: TeacherFn | None, view_size: int, start: int,
                  progress: bool) -> tuple[ImageBatches | FeatureBatches, Callable[..., ImageStore]]:
    """The endless labeled + unlabeled batch streams the method draws from, picking up at step
    ``start``, and the function that opens a split's image store (validation and test use it)."""
    d, ctx, device = cfg.data, run.ctx, run.device
    side = cfg.store_side(view_size)  # training images are kept at this size; validation and test at full size
    in_memory, workers = _memory_plan(cfg, manifest, side)
    store = partial(_store, manifest, in_memory, run.shows(progress))
    views = {name: TrainViews(store(side, items, name), view_size, cfg.optim.crop_scale, seed=cfg.seed, num_views=d.num_views)
             for name, items, used in (("labeled", manifest.labeled, spec.labeled),
                                       ("unlabeled", manifest.unlabeled, spec.unlabeled)) if used}
    device_crops = in_memory and (d.device_crops if d.device_crops is not None else device.type == "cuda")
    if device_crops:  # decoded once, uploaded once; each step's crops and flips run on the device
        for v in views.values():
            v.store.to(device)
    if cfg.student.freeze_backbone:
        kept = FeatureStore(cfg.student.feature_cache, student, {  # what else a view's crop depends on
            "data": os.path.realpath(os.path.expanduser(d.root)), "dataset": d.dataset, "view_size": view_size,
            "crop_scale": list(cfg.optim.crop_scale), "store_side": side}) if cfg.student.feature_cache else None
        batches: ImageBatches | FeatureBatches = FeatureBatches(
            views, planned_views(cfg, manifest), cfg.optim.batch_size, cfg.seed, device, student.embed, teacher_fn,
            ctx.rank, ctx.world_size, progress=run.shows(progress), start=start, kept=kept)
    else:
        batches = ImageBatches(views, cfg.optim.batch_size, cfg.seed, device, teacher_fn,
                               0 if device_crops else workers, ctx.rank, ctx.world_size, start=start)
    return batches, partial(store, None)


def _memory_plan(cfg: RunConfig, manifest: SplitManifest, side: int | None) -> tuple[bool, int]:
    """(keep the training images in memory, DataLoader workers): in memory when asked and they fit
    ``data.memory_budget``; else decoded from disk, in ``data.num_workers`` workers or the free cores."""
    d = cfg.data
    if not d.in_memory:
        return False, d.num_workers
    need = kept_bytes(manifest, [*manifest.labeled, *manifest.unlabeled], side)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need <= d.memory_budget * memory:
        return True, d.num_workers
    workers = d.num_workers or max(1, free_cores() - 1)
    log.warning("the training images would take about %.1f GB decoded, above data.memory_budget=%g of this machine's "
                "%.1f GB: decoding them from disk at every use, in %d DataLoader workers", need / 1e9, d.memory_budget,
                memory / 1e9, workers)
    return False, workers


def _store(manifest: SplitManifest, in_memory: bool, progress: bool, max_side: int | None, items: list, name: str) -> ImageStore:
    return ImageStore(manifest, items, in_memory=in_memory, progress=progress, desc=f"decode {name}", max_side=max_side)


def choose_backward(cfg: RunConfig, spec: MethodSpec, params: Sequence[Tensor], ctx: DistContext) -> Backward:
    """The step's backward pass, chosen once: the summed loss, or PCGrad on the weighted CE and KD
    terms (which averages its gradients across ranks itself, as it runs outside DDP)."""
    if not spec.pcgrad:
        return lambda losses: losses["loss"].backward()
    ce_w, kd_w = cfg.loss.ce_weight, cfg.loss.kd_weight

    def pcgrad(losses: dict[str, Tensor]) -> None:
        pcgrad_backward([ce_w * losses["ce_loss"], kd_w * losses["kd_loss"]], params)
        distributed.average_gradients(ctx, params)

    return pcgrad


def method_student(cfg: RunConfig, teacher: Teacher, classes: list[str], device: torch.device) -> DualHeadStudent:
    """The method's student (one or two heads, a projector for feature KD), its heads initialised
    from the teacher's class embeddings, on ``device`` as ``cfg`` lays it out."""
    spec = METHOD_SPECS[cfg.loss.method]
    embeddings = teacher.class_embeddings.cpu()
    if cfg.student.language_init and not spec.projector and clip_student(cfg.student):
        embeddings = student_text_embeddings(cfg.student, classes, teacher.templates)
    student = build_student(cfg.student, classes, dual_head=spec.dual_head, class_embeddings=embeddings,
                            projector_dim=embeddings.shape[1] if spec.projector else None,
                            text_head=cfg.loss.method == "kd_feature").to(device)
    if cfg.student.freeze_backbone:
        student.freeze_backbone()
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
        student.preprocess.channels_last = True
    if cfg.compile and not cfg.student.freeze_backbone:
        student.backbone.compile()
    return student
