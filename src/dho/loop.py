"""One training loop for every method: streams -> teacher -> student -> loss -> step -> validation -> finish.

Each step draws a labeled batch and an unlabeled batch of the same size (1:1), runs the
teacher and the student on the same augmented crops (each normalising its own way), and
minimises the method's loss. Afterwards alpha/beta are tuned on validation logits only, the
test split is scored once, and the student is checkpointed (never the teacher). What a method
consumes is its :class:`dho.methods.MethodSpec`; everything settled before the first step is in
:mod:`dho.training.setup`.
"""

from __future__ import annotations

import copy
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from .checkpoint import save_checkpoint
from .config import RunConfig
from .data import EvalViews, ImageStore, SplitManifest
from .data.manifest import SplitInfo
from .device import autocast
from .evaluate import Scores, SplitLogits, collect_logits, own_size_logits, score, tune_mixing
from .gradients import gradient_conflict
from .heads import HeadOutput
from .losses import method_loss
from .methods import METHOD_SPECS
from .mixing import write_grid_csv
from .progress import progress as progress_bar
from .students import DualHeadStudent
from .teachers import Teacher, TeacherOutput, build_teacher, resolve_teacher
from .teachers.cache import TeacherCache
from .teachers.fewshot import FewShotTeacher, fit_fewshot_teacher
from .training import distributed
from .training.batches import Batch, TeacherFn
from .training.distributed import DistContext
from .training.optim import build_optimizer, build_scheduler
from .training.plan import steps_per_epoch, total_steps, training_view_size
from .training.rundir import MetricsLog
from .training.setup import Started, build_streams, choose_backward, load_splits, method_student, start_run, teacher_store
from .training.state import BestEpoch
from .training.stopping import BufferGuard, NonFiniteLoss, StopSignals, TrainingInterrupted

__all__ = ["RunResult", "RunResults", "train"]

log = logging.getLogger(__name__)


class RunResults(TypedDict, total=False):
    """A finished run's ``results.json`` (written last: its presence marks the run complete)."""

    method: str
    steps: int
    epochs_kept: int  # the epoch whose weights were kept (the best on validation, or the last)
    alpha: float
    beta: float
    selection: str  # how alpha/beta were chosen (Mix.selection)
    val_mixed: float  # the chosen mix's validation accuracy, when searched
    test: Scores
    val: Scores
    teacher: str  # the teacher's id
    split: SplitInfo
    wall_time_s: float
    teacher_cache: dict[str, int]  # hits and misses of a replayed teacher
    distributed: dict[str, Any]  # world size and each replica's weight checksum


@dataclass
class RunResult:
    run_dir: Path
    results: RunResults  # as results.json
    student: DualHeadStudent


def train(cfg: RunConfig, *, progress: bool = False, teacher: Teacher | None = None,
          teacher_cache: TeacherCache | None = None, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train a student as configured; write the run directory; return its results.

    ``teacher`` reuses an already built teacher (it must match ``cfg.teacher``; a
    :class:`FewShotTeacher` is used as given, otherwise one is fitted when ``teacher.adapter`` asks);
    ``teacher_cache`` replays the base teacher's outputs of views seen before (e.g. by another
    method or shot count on the same seed); without one, ``teacher.cache`` names a store on disk.
    ``resume`` continues the run in ``cfg.out`` from its saved state (``state/last``, else
    ``state/previous``); the result is the one an uninterrupted run gives. A fresh run refuses a
    directory that holds a finished or an interrupted run unless ``overwrite``; the directory is
    locked while the run writes it. SIGINT/SIGTERM finish the current step, save the state and raise
    :class:`TrainingInterrupted`; a NaN or infinite loss term saves the last good state and raises
    :class:`NonFiniteLoss`. Under ``torchrun`` every process calls this; rank 0 writes the run directory.
    """
    # ---- set-up: process, device, run directory, resumed state, the split -----------------------
    started = time.time()
    cfg = resolve_teacher(cfg)  # teacher.kind=auto -> the real teacher this machine has, recorded in config.yaml
    run = start_run(cfg, resume, overwrite)
    try:
        return _train(cfg, run, started, progress, teacher, teacher_cache)
    finally:
        run.dir.release()


def _train(cfg: RunConfig, run: Started, started: float, progress: bool, teacher: Teacher | None,
           teacher_cache: TeacherCache | None) -> RunResult:
    ctx, device, resumed = run.ctx, run.device, run.resumed
    spec, frozen = METHOD_SPECS[cfg.loss.method], cfg.student.freeze_backbone
    manifest = load_splits(cfg, run)
    metrics = run.dir.metrics(keep_until=run.resumed_step(), tensorboard=cfg.tensorboard)

    # ---- teacher and student: zero-shot teacher, student, replayed outputs, few-shot teacher -----
    teacher = _zero_shot_teacher(cfg, teacher, manifest, run)
    student = method_student(cfg, teacher, manifest.classes, device)
    view_size = training_view_size(cfg, teacher.image_size)
    teacher_cache = teacher_store(cfg, teacher, teacher_cache)
    cache_counts = _counter(teacher_cache)
    teacher = _few_shot_teacher(cfg, teacher, manifest, view_size, teacher_cache)
    teacher_fn = _teacher_fn(teacher, teacher_cache) if spec.teacher else None

    # ---- streams: endless labeled + unlabeled batches, 1:1, picking up at a resumed step ---------
    spe, steps = steps_per_epoch(cfg, manifest), total_steps(cfg, manifest)
    start = min(run.resumed_step() or 0, steps)
    batches, store = build_streams(cfg, run, manifest, spec, student, teacher_fn, view_size, start, progress)
    val_store = store(manifest.val, "val") if manifest.val else None
    val_views = EvalViews(val_store, student.preprocess.size) if val_store is not None else None

    # ---- optimiser, schedule, backward; a resumed run's weights and RNG last (nothing above draws) -
    model = _replicated(student, spec.pcgrad, run)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    backward = choose_backward(cfg, spec, trainable, ctx)
    conflict_every = _conflict_every(cfg)
    best = resumed.restore(student, optimizer, scheduler) if resumed is not None else BestEpoch()
    save = partial(_save_state, cfg, run, manifest.classes, student, optimizer, scheduler, best)
    _announce(cfg, run, teacher, steps, spe)

    # ---- loop -------------------------------------------------------------------------------------
    guard = BufferGuard(None if frozen else student)
    student.train()
    bar = progress_bar(range(start, steps), initial=start, total=steps, desc=f"train {cfg.loss.method}",
                       enabled=run.shows(progress))
    with StopSignals() as stop:
        for step in bar:
            # forward: the teacher's outputs come with the batch (online, replayed or precomputed)
            batch = next(batches)
            guard.keep()
            with autocast(device, run.amp):
                out = _forward(cfg, model, batch)
            # loss, checked on every rank before any weight changes
            losses = method_loss(cfg.loss.method, out, batch.labels, batch.teacher, batch.num_labeled, cfg.loss)
            bad = distributed.nonfinite_terms(ctx, losses)
            if bad:  # with the buffers put back, the state now is the last good one
                guard.restore()
                raise _nonfinite(step, bad, losses, save(step, f"before the non-finite loss at step {step + 1}"))
            if _due(conflict_every, step) and metrics.enabled:
                _log_conflict(cfg, metrics, student, out, losses, batch, step + 1, spe)
            # step
            optimizer.zero_grad(set_to_none=True)
            backward(losses)
            optimizer.step()
            scheduler.step()
            # log, validate, stop on a signal, checkpoint
            done = step + 1
            if _due(10, step) or done == steps:
                _log_losses(ctx, metrics, bar, losses, done, spe, float(scheduler.get_last_lr()[0]))
            if val_views is not None and _validation_due(cfg, done, spe):
                _validate(cfg, run, val_views, student, best, metrics, done, done // spe)
            if distributed.any_across(ctx, stop.signum is not None, device):  # every rank stops after the same step
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, done, steps, save(done, "signal"), run.dir.path)
            if _due(cfg.checkpoint_every, done) and done < steps:
                save(done, "periodic")
        bar.close()
        # ---- finish: the best epoch back, alpha/beta on validation, test scored once, checkpoint --
        # the end state first: a signal or a failure during evaluation costs no training on --resume
        halt = partial(_halt, run, stop, steps, save(steps, "end of training") if start < steps else run.dir.state_dir)
        halt()
        results = RunResults(method=cfg.loss.method, steps=steps,
                             **_finish(cfg, run, student, teacher, manifest, best, store, val_store, progress, halt),
                             wall_time_s=round(time.time() - started, 2), **_extras(run.ctx, student, cache_counts))
    run.dir.write_json("results.json", results)  # last: a finished run has one
    run.dir.finish()
    return RunResult(run.dir.path, results, student)


# ---- teacher and student ------------------------------------------------------------------------
def _zero_shot_teacher(cfg: RunConfig, given: Teacher | None, manifest: SplitManifest, run: Started) -> Teacher:
    """The given teacher (checked against the classes) or one built from ``cfg.teacher``, on the
    run's device at the run's precision."""
    if given is None:
        given = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset)
    elif given.classnames != manifest.classes:
        raise ValueError("the given teacher was built for other classes than this dataset's")
    teacher = given.to(run.device)
    (teacher.base if isinstance(teacher, FewShotTeacher) else teacher).autocast_dtype = run.amp
    return teacher


def _few_shot_teacher(cfg: RunConfig, teacher: Teacher, manifest: SplitManifest, view_size: int,
                      cache: TeacherCache | None) -> Teacher:
    """A few-shot teacher fitted on the labeled shots when ``teacher.adapter`` asks for one and none was given."""
    if cfg.adapter == "none" or isinstance(teacher, FewShotTeacher):
        return teacher
    if cfg.teacher.adapter == "auto":
        log.info("teacher.adapter=auto: the few-shot teacher (Tip-Adapter-F on the %d labeled images, the paper's "
                 "DHO-F); teacher.adapter=none trains against the zero-shot teacher", len(manifest.labeled))
    return fit_fewshot_teacher(cfg, teacher, manifest, view_size, cache)


def _replicated(student: DualHeadStudent, pcgrad: bool, run: Started) -> torch.nn.Module:
    """The student under DistributedDataParallel with torchrun (PCGrad averages its own gradients)."""
    if not run.ctx.enabled or pcgrad:
        return student
    return DistributedDataParallel(student, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def _announce(cfg: RunConfig, run: Started, teacher: Teacher, steps: int, spe: int) -> None:
    if run.resumed is not None:
        log.info("resumed from %s after step %d of %d", run.resumed.path, run.resumed.step, steps)
    log.info("training %s: %d steps (%d per epoch), %s student%s, teacher %s, %s", cfg.loss.method, steps, spe,
             cfg.student.backbone, " (heads only)" if cfg.student.freeze_backbone else "", teacher.id,
             "bf16 autocast" if run.amp else "fp32")


def _teacher_fn(teacher: Teacher, cache: TeacherCache | None) -> TeacherFn:
    """(images, view keys) -> the teacher's outputs: online at the run's precision, or the base
    teacher's replayed from ``cache`` (a few-shot teacher adapts them)."""
    @torch.no_grad()
    def outputs(images: torch.Tensor, keys: list[str]) -> TeacherOutput:
        if cache is None:
            return teacher(images)
        out = cache.outputs(images, keys)
        return teacher.adapt(out) if isinstance(teacher, FewShotTeacher) else out

    return outputs


def _counter(cache: TeacherCache | None) -> Callable[[], dict[str, int]] | None:
    """The cache's hits and misses from now on (a sweep's cache is shared by its runs)."""
    if cache is None:
        return None
    hits, misses = cache.hits, cache.misses
    return lambda: {"hits": cache.hits - hits, "misses": cache.misses - misses}


# ---- a step -------------------------------------------------------------------------------------
def _forward(cfg: RunConfig, model: torch.nn.Module, batch: Batch) -> HeadOutput:
    """The student on the batch: features into the heads (frozen backbone), else images, labeled
    and unlabeled rows in two passes (``student.stream_forward=separate``, BatchNorm) or one."""
    if cfg.student.freeze_backbone:  # DHO reads h_CE on the labeled rows only: the unlabeled ones skip it
        return model(features=batch.inputs, ce_rows=batch.num_labeled if cfg.loss.method == "dho" else None)
    return model(batch.inputs, split=batch.num_labeled if cfg.student.stream_forward == "separate" else None)


def _due(every: int, step: int) -> bool:
    """Every ``every`` steps (never for 0)."""
    return bool(every) and step % every == 0


def _nonfinite(step: int, bad: list[str], losses: dict[str, torch.Tensor], state: Path | None) -> NonFiniteLoss:
    terms = [k for k in bad if k != "loss"] or bad
    return NonFiniteLoss(step + 1, terms, {k: float(v.detach()) for k, v in losses.items()}, state)


def _conflict_every(cfg: RunConfig) -> int:
    if cfg.eval.conflict_every and cfg.student.freeze_backbone:
        log.warning("gradient conflict is measured on the backbone, which is frozen: not measured")
        return 0
    return cfg.eval.conflict_every


def _log_conflict(cfg: RunConfig, metrics: MetricsLog, student: DualHeadStudent, out: HeadOutput,
                  losses: dict[str, torch.Tensor], batch: Batch, done: int, spe: int) -> None:
    conflict = gradient_conflict(student.backbone, out, losses, batch.labels, batch.teacher, batch.num_labeled,
                                 mode=cfg.eval.conflict, max_samples=cfg.eval.conflict_samples)
    if conflict is not None:
        metrics.write({"step": done, "epoch": done / spe, "conflict": conflict})


def _log_losses(ctx: DistContext, metrics: MetricsLog, bar: Any, losses: dict[str, torch.Tensor], done: int,
                spe: int, lr: float) -> None:
    values = distributed.mean_across(ctx, {k: v.detach().float() for k, v in losses.items()})
    record = {"step": done, "epoch": done / spe, "lr": lr, **{k: round(v, 6) for k, v in values.items()}}
    metrics.write(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}")


def _save_state(cfg: RunConfig, run: Started, classes: list[str], student: DualHeadStudent,
                optimizer: torch.optim.Optimizer, scheduler: Any, best: BestEpoch, done: int, reason: str) -> Path | None:
    """Save the resumable state after ``done`` steps (rank 0 writes; every rank waits for it)."""
    path = run.dir.save_state(step=done, student=student, optimizer=optimizer, scheduler=scheduler, best=best,
                              classes=classes, config=cfg.to_dict(), reason=reason)
    distributed.barrier(run.ctx)
    return path


# ---- validation ---------------------------------------------------------------------------------
def _validation_due(cfg: RunConfig, done: int, spe: int) -> bool:
    return bool(cfg.eval.eval_every) and done % spe == 0 and (done // spe) % cfg.eval.eval_every == 0


def _collect(ctx: DistContext, views: EvalViews, student: DualHeadStudent | None, teacher: Teacher | None,
             **kw: Any) -> SplitLogits:
    """Logits of a split; under torchrun each rank scores rows rank::world (no padding) and all get every row."""
    if not ctx.enabled:
        return collect_logits(views, student, teacher, **kw)
    part = collect_logits(Subset(views, range(ctx.rank, len(views), ctx.world_size)), student, teacher, **kw)
    n = len(views)
    gathered = [distributed.gather_rows(ctx, t, n) for t in (part.labels, part.ce, part.kd, part.teacher)]
    return SplitLogits(*gathered)  # type: ignore[arg-type]  # labels are always there


def _validate(cfg: RunConfig, run: Started, views: EvalViews, student: DualHeadStudent, best: BestEpoch,
              metrics: MetricsLog, done: int, epoch: int) -> None:
    """Score the student on validation (alpha/beta searched as at the end); with ``eval.keep=best``
    a better epoch becomes ``best`` and its student ``state/best``."""
    val_logits = _collect(run.ctx, views, student, None, batch_size=cfg.eval.batch_size, device=run.device)
    mix = tune_mixing(cfg, student, val_logits)
    val_acc = mix.val_mixed if mix.val_mixed is not None else score(val_logits)["ce_head"]
    metrics.write({"step": done, "epoch": epoch, "val": score(val_logits, mix.alpha, mix.beta)})
    if cfg.eval.keep == "best" and val_acc > best.val:
        best.val, best.epoch, best.step, best.state = val_acc, epoch, done, copy.deepcopy(student.state_dict())
        run.dir.write("state/best", lambda p: save_checkpoint(student, p, best=best.record()))


# ---- finish -------------------------------------------------------------------------------------
def _halt(run: Started, stop: StopSignals, steps: int, state: Path | None) -> None:
    """Stop with :class:`TrainingInterrupted` when a signal came after the last step (the end state is saved)."""
    if distributed.any_across(run.ctx, stop.signum is not None, run.device):
        raise TrainingInterrupted(stop.signum or signal.SIGTERM, steps, steps, state, run.dir.path)


def _finish(cfg: RunConfig, run: Started, student: DualHeadStudent, teacher: Teacher, manifest: SplitManifest,
            best: BestEpoch, store: Callable[..., ImageStore], val_store: ImageStore | None,
            progress: bool, halt: Callable[[], None]) -> RunResults:
    """Restore the best epoch, choose alpha/beta on validation, score the test split once (each
    model at its own input size), write mixing_grid.csv and checkpoint/; what results.json records of it.
    ``halt()`` between the stages stops there on a signal."""
    if best.state is not None:
        student.load_state_dict(best.state)
        log.info("kept epoch %d (validation %.4f)", best.epoch, best.val)
    eval_kw: dict[str, Any] = {"batch_size": cfg.eval.batch_size, "device": run.device, "progress": run.shows(progress),
               "num_workers": cfg.data.num_workers, "collect": partial(_collect, run.ctx)}
    eval_teacher = teacher if cfg.eval.teacher else None
    val_logits = own_size_logits(val_store, student, eval_teacher, desc="validation", **eval_kw) if val_store else None
    halt()
    mix = tune_mixing(cfg, student, val_logits)
    student.alpha, student.beta = mix.alpha, mix.beta
    test_store = store(manifest.test, "test") if manifest.test else None
    test_logits = own_size_logits(test_store, student, eval_teacher, desc="test", **eval_kw) if test_store else None
    halt()
    test = score(test_logits, student.alpha, student.beta) if test_logits is not None else {}
    val = score(val_logits, student.alpha, student.beta) if val_logits else {}
    results = RunResults(epochs_kept=best.epoch or cfg.optim.epochs, **mix.as_dict(), test=test, val=val,
                         teacher=teacher.id, split=manifest.info)
    _write_grid(run, student, val_logits)
    run.dir.write("checkpoint", lambda p: save_checkpoint(
        student, p, templates=list(teacher.templates), teacher=teacher.describe(), mixing=mix.as_dict(),
        config=cfg.to_dict(), split=manifest.info, metrics={"test": test.get("mixed", test.get("ce_head"))},
        scores={"val": val, "test": test}))
    if run.ctx.is_main:
        shown, where = (test, "test") if test.get("n") else (val, "validation (no test split)")
        log.info("%s accuracy: %s", where, {k: round(v, 4) for k, v in shown.items() if isinstance(v, float)})
    return results


def _write_grid(run: Started, student: DualHeadStudent, logits: SplitLogits | None) -> None:
    """mixing_grid.csv: every (alpha, beta)'s validation accuracy of a dual-head student (the report's heat maps)."""
    if logits is None or not student.dual_head or logits.ce is None or logits.kd is None or not len(logits.labels):
        return
    run.dir.write("mixing_grid.csv", partial(write_grid_csv, ce_logits=logits.ce, kd_logits=logits.kd, labels=logits.labels))


def _extras(ctx: DistContext, student: DualHeadStudent, cache_counts: Callable[[], dict[str, int]] | None) -> RunResults:
    """The teacher cache's hits and misses of this run; under torchrun each replica's weight
    checksum (equal checksums = replicas in sync)."""
    out = RunResults()
    if cache_counts is not None:
        out["teacher_cache"] = cache_counts()
    if ctx.enabled:
        out["distributed"] = {"world_size": ctx.world_size,
                              "param_checksums": distributed.all_gather_float(ctx, distributed.param_checksum(student))}
    return out
