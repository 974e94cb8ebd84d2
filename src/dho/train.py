"""One training loop for every method: setup / build / loop / finish.

Each step draws a labeled batch and an unlabeled batch of the same size (1:1), runs the
teacher and the student on the same augmented crops (each normalising its own way), and
minimises the method's loss. Afterwards alpha/beta are tuned on validation logits only, the
test split is scored once, and the student is checkpointed (never the teacher).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from . import distributed
from .batches import FeatureBatches, ImageBatches
from .checkpoint import save_checkpoint
from .config import RunConfig, save_config
from .data import EvalViews, ImageStore, SplitManifest, TrainViews
from .data.duplicates import check_overlaps
from .data.splits import splits_for
from .distributed import DistContext
from .evaluate import SplitLogits, collect_logits, own_size_logits, score
from .gradients import gradient_conflict, pcgrad_backward
from .losses import METHOD_SPECS, method_loss
from .mixing import tune_mixing, write_grid_csv
from .optim import build_optimizer, build_scheduler
from .plan import planned_views, steps_per_epoch, total_steps, training_view_size
from .precision import autocast, precision_name, resolve_precision
from .state import TrainState, discard_state, load_state, save_state
from .stopping import NonFiniteLoss, StopSignals, TrainingInterrupted
from .students import (
    DualHeadStudent,
    build_student,
    clip_student,
    student_text_embeddings,
)
from .teachers import Teacher, TeacherOutput, build_teacher
from .teachers.cache import TeacherCache
from .teachers.fewshot import FewShotTeacher, fit_fewshot_teacher

__all__ = ["RunResult", "free_cores", "resolve_device", "seed_everything", "train"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    results: dict
    student: DualHeadStudent


def free_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only; the others write nothing).

    A resumed run keeps the records up to the step it resumes from (``keep_until``) and drops the
    later ones, which it is about to write again.
    """

    def __init__(self, path: Path, enabled: bool = True, keep_until: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= keep_until:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
                    continue
        path.write_text("".join(kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def _build_student(cfg: RunConfig, teacher: Teacher, classes: list[str]) -> DualHeadStudent:
    spec = METHOD_SPECS[cfg.loss.method]
    embeddings = teacher.class_embeddings.cpu()
    if cfg.student.language_init and not spec.projector and clip_student(cfg.student):
        embeddings = student_text_embeddings(cfg.student, classes, teacher.templates)
    return build_student(cfg.student, classes, dual_head=spec.dual_head, class_embeddings=embeddings,
                         projector_dim=embeddings.shape[1] if spec.projector else None,
                         text_head=cfg.loss.method == "kd_feature")


def _collect(ctx: DistContext, views: Dataset, student: DualHeadStudent, teacher: Teacher | None, **kw) -> SplitLogits:
    """Logits of a split; under torchrun each rank scores rows rank::world (no padding) and all get every row."""
    if not ctx.enabled:
        return collect_logits(views, student, teacher, **kw)
    part = collect_logits(Subset(views, range(ctx.rank, len(views), ctx.world_size)), student, teacher, **kw)
    n = len(views)
    return SplitLogits(*(distributed.gather_rows(ctx, t, n) for t in (part.labels, part.ce, part.kd, part.teacher)))


def _teacher_cache(cfg: RunConfig, teacher: Teacher, given: TeacherCache | None) -> TeacherCache | None:
    """The cache handed in by a caller (sweeps), else the store named by ``teacher.cache``, else none."""
    if given is not None or not cfg.teacher.cache:
        return given
    base = teacher.base if isinstance(teacher, FewShotTeacher) else teacher
    cache = TeacherCache.load(base, cfg.teacher.cache)
    info = cache.store.meta.get("info", {})
    expected = {"view_size": training_view_size(cfg, base.image_size), "crop_scale": list(cfg.optim.crop_scale)}
    clash = {k: (info[k], v) for k, v in expected.items() if k in info and info[k] != v}
    if clash:
        raise ValueError(f"teacher.cache={cfg.teacher.cache} was built for other views: "
                         + ", ".join(f"{k}={a} (this run: {b})" for k, (a, b) in clash.items()))
    ours = precision_name(base.autocast_dtype)
    if info.get("teacher_precision", ours) != ours:
        log.warning("teacher.cache=%s was computed at %s, this run's teacher runs at %s: replayed outputs differ "
                    "from online ones by that rounding", cfg.teacher.cache, info["teacher_precision"], ours)
    if cache.store.meta["topk"] and cfg.teacher.adapter != "none":
        raise ValueError(f"teacher.cache={cfg.teacher.cache} keeps top-{cache.store.meta['topk']} logits; "
                         "the few-shot teacher needs all of them (build the store without --topk)")
    log.info("teacher outputs replayed from %s (%d views, %s)", cfg.teacher.cache, len(cache), cache.store.meta["dtype"])
    return cache


def _resume_state(run_dir: Path, resume: bool) -> TrainState | None:
    if not resume:
        return None
    state = load_state(run_dir / "state")
    if state is None:
        finished = " (the run finished; its student is checkpoint/)" if (run_dir / "results.json").is_file() else ""
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no training state under {run_dir / 'state'}{finished}")
    return state


def _same_splits(manifest: SplitManifest, run_dir: Path) -> None:
    """A resumed run must see exactly the split it started with (the saved splits.json)."""
    saved = SplitManifest.load(run_dir / "splits.json")
    changed = manifest.differences(saved)
    if changed:
        raise ValueError(f"the dataset changed since {run_dir} started ({'; '.join(changed)}); a resumed run needs the same files")


def train(cfg: RunConfig, *, progress: bool = False, teacher: Teacher | None = None,
          teacher_cache: TeacherCache | None = None, resume: bool = False) -> RunResult:
    """Train a student as configured; write the run directory; return its results.

    ``teacher`` reuses an already built teacher (it must match ``cfg.teacher``; a
    :class:`FewShotTeacher` is used as given, otherwise one is fitted when ``teacher.adapter`` asks);
    ``teacher_cache`` replays the base teacher's outputs of views seen before (e.g. by another
    method or shot count on the same seed); without one, ``teacher.cache`` names a store on disk.
    ``resume`` continues the run in ``cfg.out`` from its saved state (``state/last``, else
    ``state/previous``); the result is the one an uninterrupted run gives. SIGINT/SIGTERM finish
    the current step, save the state and raise :class:`TrainingInterrupted`; a NaN or infinite loss
    term saves the last good state and raises :class:`NonFiniteLoss`.
    Under ``torchrun`` every process calls this; rank 0 writes the run directory.
    """
    # ---- setup ------------------------------------------------------------------------------
    started = time.time()
    ctx, device = distributed.init_distributed(cfg.device)
    run_dir = Path(cfg.out)
    state_dir = run_dir / "state"
    resumed = _resume_state(run_dir, resume)
    if resumed is not None:
        resumed.check_config(cfg.to_dict())
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resumed is None:
            discard_state(state_dir)
        save_config(cfg, run_dir / "config.yaml")
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, free_cores() // local_procs))
    amp = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    spec = METHOD_SPECS[cfg.loss.method]
    frozen = cfg.student.freeze_backbone

    # ---- build: splits, teacher, student, data streams, optimiser -----------------------------
    d = cfg.data
    manifest = splits_for(d)
    if resumed is not None:
        _same_splits(manifest, run_dir)
        resumed.check_classes(manifest.classes)
    check_overlaps(manifest, d.duplicates)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=ctx.is_main, keep_until=resumed.step if resumed else None)
    if ctx.is_main:
        manifest.save(run_dir / "splits.json")
        if manifest.info.get("bad_files"):
            (run_dir / "bad_files.json").write_text(json.dumps(manifest.info["bad_files"], indent=1))
    log.info("data: %s", manifest.summary())
    if teacher is None:
        teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset)
    elif teacher.classnames != manifest.classes:
        raise ValueError("the given teacher was built for other classes than this dataset's")
    teacher = teacher.to(device)
    (teacher.base if isinstance(teacher, FewShotTeacher) else teacher).autocast_dtype = amp
    student = _build_student(cfg, teacher, manifest.classes).to(device)
    if frozen:
        student.freeze_backbone()
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
        student.preprocess.channels_last = True
    if cfg.compile and not frozen:
        student.backbone.compile()
    view_size = training_view_size(cfg, teacher.image_size)
    teacher_cache = _teacher_cache(cfg, teacher, teacher_cache)
    cache_start = (teacher_cache.hits, teacher_cache.misses) if teacher_cache is not None else (0, 0)
    if cfg.teacher.adapter != "none" and not isinstance(teacher, FewShotTeacher):
        teacher = fit_fewshot_teacher(cfg, teacher, manifest, view_size, teacher_cache)

    @torch.no_grad()
    def teacher_outputs(images: torch.Tensor, keys: list[str]) -> TeacherOutput:
        if teacher_cache is None:
            return teacher(images)  # at the run's precision (teacher.autocast_dtype)
        out = teacher_cache.outputs(images, keys)  # the base teacher's outputs
        return teacher.adapt(out) if isinstance(teacher, FewShotTeacher) else out
    def store(items, name):
        return ImageStore(manifest, items, in_memory=d.in_memory, progress=progress and ctx.is_main, desc=f"decode {name}")

    views = {name: TrainViews(store(items, name), view_size, cfg.optim.crop_scale, seed=cfg.seed, num_views=d.num_views)
             for name, items, used in (("labeled", manifest.labeled, spec.labeled),
                                       ("unlabeled", manifest.unlabeled, spec.unlabeled)) if used}
    device_crops = d.in_memory and (d.device_crops if d.device_crops is not None else device.type == "cuda")
    if device_crops:  # decoded once, uploaded once; each step's crops and flips run on the device
        for v in views.values():
            v.store.to(device)
    spe, steps = steps_per_epoch(cfg, manifest), total_steps(cfg, manifest)
    start = min(resumed.step, steps) if resumed is not None else 0  # the streams pick up at the saved step
    t_fn = teacher_outputs if spec.teacher else None
    if frozen:
        batches = FeatureBatches(views, planned_views(cfg, manifest), cfg.optim.batch_size, cfg.seed, device,
                                 student.embed, t_fn, ctx.rank, ctx.world_size, progress=progress and ctx.is_main, start=start)
    else:
        batches = ImageBatches(views, cfg.optim.batch_size, cfg.seed, device, t_fn, 0 if device_crops else d.num_workers,
                               ctx.rank, ctx.world_size, start=start)
    val_store = store(manifest.val, "val") if manifest.val else None
    val_views = EvalViews(val_store, student.preprocess.size) if val_store is not None else None
    # PCGrad combines per-objective gradients itself, so it averages them across ranks by hand.
    ddp = ctx.enabled and not spec.pcgrad
    model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None) if ddp else student
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    conflict_every = cfg.eval.conflict_every if not frozen else 0
    if cfg.eval.conflict_every and frozen:
        log.warning("gradient conflict is measured on the backbone, which is frozen: not measured")
    best = {"val": -1.0, "state": None, "epoch": None, "step": None}
    if resumed is not None:  # last, so that nothing built above draws from the restored RNG
        best = resumed.restore(student, optimizer, scheduler)
        log.info("resumed from %s after step %d of %d", resumed.path, resumed.step, steps)
    log.info("training %s: %d steps (%d per epoch), %s student%s, teacher %s, %s",
             cfg.loss.method, steps, spe, cfg.student.backbone, " (heads only)" if frozen else "", teacher.id,
             "bf16 autocast" if amp is not None else "fp32")

    def checkpoint(done: int, reason: str) -> Path | None:
        """Save the resumable state after ``done`` steps (rank 0 writes; every rank waits for it)."""
        path = None
        if ctx.is_main:
            path = save_state(state_dir, step=done, student=student, optimizer=optimizer, scheduler=scheduler, best=best,
                              classes=manifest.classes, config=cfg.to_dict(), reason=reason)
        distributed.barrier(ctx)
        return path

    # ---- loop -------------------------------------------------------------------------------
    # A step's forward pass updates BatchNorm statistics before its loss can be checked: a copy of
    # the buffers lets a non-finite loss save the state after the last good step, untouched.
    separate = cfg.student.stream_forward == "separate"  # labeled and unlabeled rows in two passes (BatchNorm)
    buffers = [] if frozen else list(student.buffers())
    good_buffers = [b.detach().clone() for b in buffers]
    student.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {cfg.loss.method}",
               disable=not (progress and ctx.is_main))
    with StopSignals() as stop:
        for step in bar:
            batch = next(batches)
            for kept, b in zip(good_buffers, buffers):
                kept.copy_(b)
            with autocast(device, amp):
                if frozen:
                    out = model(features=batch.inputs)
                else:
                    out = model(batch.inputs, split=batch.num_labeled if separate else None)
            losses = method_loss(cfg.loss.method, out, batch.labels, batch.teacher, batch.num_labeled, cfg.loss)
            bad = distributed.nonfinite_terms(ctx, losses)
            if bad:  # no weight has changed yet; with the buffers put back this is the last good state
                for kept, b in zip(good_buffers, buffers):
                    b.copy_(kept)
                path = checkpoint(step, f"before the non-finite loss at step {step + 1}")
                raise NonFiniteLoss(step + 1, [k for k in bad if k != "loss"] or bad,
                                    {k: float(v.detach()) for k, v in losses.items()}, path)
            if conflict_every and step % conflict_every == 0 and ctx.is_main:
                conflict = gradient_conflict(student.backbone, out, losses, batch.labels, batch.teacher, batch.num_labeled,
                                             mode=cfg.eval.conflict, max_samples=cfg.eval.conflict_samples)
                if conflict is not None:
                    metrics.write({"step": step + 1, "epoch": (step + 1) / spe, "conflict": conflict})
            optimizer.zero_grad(set_to_none=True)
            if spec.pcgrad:
                pcgrad_backward([cfg.loss.ce_weight * losses["ce_loss"], cfg.loss.kd_weight * losses["kd_loss"]], trainable)
                distributed.average_gradients(ctx, trainable)
            else:
                losses["loss"].backward()
            optimizer.step()
            scheduler.step()

            done = step + 1
            epoch_done, epoch = done % spe == 0, done // spe
            if step % 10 == 0 or done == steps:
                values = distributed.mean_across(ctx, {k: v.detach().float() for k, v in losses.items()})
                record = {"step": done, "epoch": done / spe, "lr": scheduler.get_last_lr()[0],
                          **{k: round(v, 6) for k, v in values.items()}}
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if val_views is not None and cfg.eval.eval_every and epoch_done and epoch % cfg.eval.eval_every == 0:
                val_logits = _collect(ctx, val_views, student, None, batch_size=cfg.eval.batch_size, device=device)
                mix = tune_mixing(cfg, student, val_logits)
                val_acc = mix.get("val_mixed", score(val_logits)["ce_head"])
                metrics.write({"step": done, "epoch": epoch, "val": score(val_logits, mix["alpha"], mix["beta"])})
                if cfg.eval.keep == "best" and val_acc > best["val"]:
                    best = {"val": val_acc, "state": copy.deepcopy(student.state_dict()), "epoch": epoch, "step": done}
                    if ctx.is_main:
                        save_checkpoint(student, state_dir / "best", best={k: v for k, v in best.items() if k != "state"})
            if distributed.any_across(ctx, stop.signum is not None, device):  # every rank stops after the same step
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, done, steps, checkpoint(done, "signal"), run_dir)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
                checkpoint(done, "periodic")
        if start < steps and cfg.checkpoint_every and steps >= cfg.checkpoint_every:
            checkpoint(steps, "end of training")  # should evaluation below fail, training need not run again
    bar.close()

    # ---- finish: restore best, tune alpha/beta on validation, score test, checkpoint ---------
    if best["state"] is not None:
        student.load_state_dict(best["state"])
        log.info("kept epoch %d (validation %.4f)", best["epoch"], best["val"])
    eval_kw = {"batch_size": cfg.eval.batch_size, "device": device, "progress": progress and ctx.is_main,
               "num_workers": d.num_workers, "collect": partial(_collect, ctx)}
    eval_teacher = teacher if cfg.eval.teacher else None
    val_logits = own_size_logits(val_store, student, eval_teacher, desc="validation", **eval_kw) if val_store else None
    mix = tune_mixing(cfg, student, val_logits)
    student.alpha, student.beta = mix["alpha"], mix["beta"]
    test_store = store(manifest.test, "test") if manifest.test else None
    test_logits = own_size_logits(test_store, student, eval_teacher, desc="test", **eval_kw) if test_store else None
    test = score(test_logits, student.alpha, student.beta) if test_logits is not None else {}
    results = {
        "method": cfg.loss.method, "steps": steps, "epochs_kept": best["epoch"] or cfg.optim.epochs,
        **mix, "test": test, "val": score(val_logits, student.alpha, student.beta) if val_logits else {},
        "teacher": teacher.id, "split": manifest.info, "wall_time_s": round(time.time() - started, 2),
    }
    if teacher_cache is not None:
        results["teacher_cache"] = {"hits": teacher_cache.hits - cache_start[0], "misses": teacher_cache.misses - cache_start[1]}
    if ctx.enabled:  # equal checksums = replicas in sync
        results["distributed"] = {"world_size": ctx.world_size,
                                  "param_checksums": distributed.all_gather_float(ctx, distributed.param_checksum(student))}
    if ctx.is_main:
        if val_logits is not None and len(val_logits.labels) and student.dual_head:
            write_grid_csv(run_dir / "mixing_grid.csv", val_logits.ce, val_logits.kd, val_logits.labels)
        save_checkpoint(student, run_dir / "checkpoint", templates=list(teacher.templates), teacher=teacher.describe(),
                        mixing=mix, config=cfg.to_dict(), split=manifest.info,
                        metrics={"test": test.get("mixed", test.get("ce_head"))},
                        scores={"val": results["val"], "test": test})
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: the student is checkpoint/, nothing to resume
        log.info("test accuracy: %s", {k: v for k, v in test.items() if isinstance(v, float)})
    return RunResult(run_dir, results, student)
