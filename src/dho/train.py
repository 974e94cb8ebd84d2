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
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .config import RunConfig, save_config
from .data import EvalViews, ImageStore, SplitManifest, StreamSampler, TrainViews
from .data.splits import splits_for
from .evaluate import collect_logits, score
from .gradients import gradient_conflict, pcgrad_backward
from .losses import METHOD_SPECS, method_loss
from .mixing import DEFAULT_ALPHAS, DEFAULT_BETAS, mixing_grid, search_mixing
from .optim import build_optimizer, build_scheduler
from .students import DualHeadStudent, build_student
from .teachers import Teacher, TeacherOutput, build_teacher
from .teachers.cache import TeacherCache
from .teachers.fewshot import FewShotTeacher, fit_fewshot_teacher

__all__ = ["RunResult", "free_cores", "planned_views", "resolve_device", "seed_everything", "total_steps", "train"]

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


def steps_per_epoch(cfg: RunConfig, manifest: SplitManifest) -> int:
    """Authors' definitions: one pass over the labeled set (few-shot) or the unlabeled set (ImageNet)."""
    n = len(manifest.labeled if cfg.optim.epoch_mode == "labeled" else manifest.unlabeled)
    return max(1, n // cfg.optim.batch_size)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _stream(views: TrainViews, batch_size: int, seed: int, name: str, workers: int):
    sampler = StreamSampler(len(views), batch_size, seed, name)
    return iter(DataLoader(views, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0))


def total_steps(cfg: RunConfig, manifest: SplitManifest) -> int:
    return min(cfg.optim.epochs * steps_per_epoch(cfg, manifest), cfg.optim.max_steps or math.inf)


def planned_views(cfg: RunConfig, manifest: SplitManifest) -> dict[str, list[tuple[int, int]]]:
    """The (index, view) pairs of each stream that a run of ``cfg`` will draw, for precomputing
    teacher outputs. The streams are the ones :func:`train` builds, replayed without images."""
    spec, steps = METHOD_SPECS[cfg.loss.method], total_steps(cfg, manifest)
    plan = {}
    for name, items, used in (("labeled", manifest.labeled, spec.labeled), ("unlabeled", manifest.unlabeled, spec.unlabeled)):
        if not used:
            continue
        batches = iter(StreamSampler(len(items), cfg.optim.batch_size, cfg.seed, name))
        n = cfg.data.num_views
        keys = {(i, p % n if n else p) for _ in range(steps) for i, p in next(batches)}
        plan[name] = sorted(keys)
    return plan


def tune_mixing(cfg: RunConfig, student: DualHeadStudent, val_logits) -> dict:
    """alpha/beta from the validation grid, or the documented defaults without validation data."""
    if not student.dual_head:
        return {"alpha": 1.0, "beta": 1.0, "selection": "single head"}
    if METHOD_SPECS[cfg.loss.method].predict == "ce_head":
        return {"alpha": 1.0, "beta": 1.0, "selection": f"{cfg.loss.method} predicts with h_CE"}
    if val_logits is None or len(val_logits.labels) == 0:
        return {"alpha": cfg.eval.alpha, "beta": cfg.eval.beta, "selection": "default (no validation data)"}
    best = search_mixing(val_logits.ce, val_logits.kd, val_logits.labels)
    return {"alpha": best.alpha, "beta": best.beta, "selection": "validation grid", "val_mixed": best.accuracy}


def write_mixing_grid(path: Path, val_logits) -> None:
    """The validation accuracy of every (alpha, beta) of the search grid, as CSV (for heat maps)."""
    grid = mixing_grid(val_logits.ce, val_logits.kd, val_logits.labels)  # [betas, alphas]
    rows = ["alpha,beta,accuracy"] + [f"{a:g},{b:g},{float(grid[bi, ai]):.6f}" for bi, b in enumerate(DEFAULT_BETAS)
                                      for ai, a in enumerate(DEFAULT_ALPHAS)]
    path.write_text("\n".join(rows) + "\n")


def _build_student(cfg: RunConfig, teacher: Teacher, classes: list[str]) -> DualHeadStudent:
    spec = METHOD_SPECS[cfg.loss.method]
    embeddings = teacher.class_embeddings.cpu()
    return build_student(cfg.student, classes, dual_head=spec.dual_head, class_embeddings=embeddings,
                         projector_dim=embeddings.shape[1] if spec.projector else None,
                         text_head=cfg.loss.method == "kd_feature")


def train(cfg: RunConfig, *, progress: bool = False, teacher: Teacher | None = None,
          teacher_cache: TeacherCache | None = None) -> RunResult:
    """Train a student as configured; write the run directory; return its results.

    ``teacher`` reuses an already built teacher (it must match ``cfg.teacher``; a
    :class:`FewShotTeacher` is used as given, otherwise one is fitted when ``teacher.adapter`` asks);
    ``teacher_cache`` replays the base teacher's outputs of views seen before (e.g. by another
    method or shot count on the same seed).
    """
    # ---- setup ------------------------------------------------------------------------------
    started = time.time()
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.set_num_threads(cfg.threads or free_cores())
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    spec = METHOD_SPECS[cfg.loss.method]
    metrics = MetricsLog(run_dir / "metrics.jsonl")

    # ---- build: splits, teacher, student, data streams, optimiser -----------------------------
    d = cfg.data
    manifest = splits_for(d)
    manifest.save(run_dir / "splits.json")
    log.info("data: %s", manifest.summary())
    if teacher is None:
        teacher = build_teacher(cfg.teacher, manifest.classes)
    elif teacher.classnames != manifest.classes:
        raise ValueError("the given teacher was built for other classes than this dataset's")
    teacher = teacher.to(device)
    student = _build_student(cfg, teacher, manifest.classes).to(device)
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
        student.preprocess.channels_last = True
    view_size = d.view_size or max(student.preprocess.size, teacher.image_size)
    if cfg.teacher.adapter != "none" and not isinstance(teacher, FewShotTeacher):
        teacher = fit_fewshot_teacher(cfg, teacher, manifest, view_size, teacher_cache)

    def teacher_outputs(images: torch.Tensor, keys: list[str]) -> TeacherOutput:
        if teacher_cache is None:
            return teacher(images)
        out = teacher_cache.outputs(images, keys)  # the base teacher's outputs
        return teacher.adapt(out) if isinstance(teacher, FewShotTeacher) else out
    eval_size = max(student.preprocess.size, teacher.image_size) if cfg.eval.teacher else student.preprocess.size

    def store(items, name):
        return ImageStore(manifest, items, in_memory=d.in_memory, progress=progress, desc=f"decode {name}")

    streams = {}
    for name, items, used in (("labeled", manifest.labeled, spec.labeled), ("unlabeled", manifest.unlabeled, spec.unlabeled)):
        if used:
            views = TrainViews(store(items, name), view_size, cfg.optim.crop_scale, seed=cfg.seed, num_views=d.num_views)
            streams[name] = _stream(views, cfg.optim.batch_size, cfg.seed, name, d.num_workers)
    val_views = EvalViews(store(manifest.val, "val"), eval_size) if manifest.val else None
    spe, steps = steps_per_epoch(cfg, manifest), total_steps(cfg, manifest)
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    log.info("training %s: %d steps (%d per epoch), %s student, teacher %s",
             cfg.loss.method, steps, spe, cfg.student.backbone, teacher.id)

    # ---- loop -------------------------------------------------------------------------------
    best = {"val": -1.0, "state": None, "epoch": None}
    student.train()
    bar = tqdm(range(steps), desc=f"train {cfg.loss.method}", disable=not progress)
    for step in bar:
        parts, keys, labels = [], [], torch.empty(0, dtype=torch.long)
        if spec.labeled:
            images_l, labels, keys_l = next(streams["labeled"])
            parts.append(images_l)
            keys += keys_l
        if spec.unlabeled:
            images_u, _, keys_u = next(streams["unlabeled"])
            parts.append(images_u)
            keys += keys_u
        num_labeled = len(labels)
        images = torch.cat(parts).to(device, non_blocking=True)  # [B_l + B_u, 3, S, S] uint8
        labels = labels.to(device)
        t_out = teacher_outputs(images, keys) if spec.teacher else None
        out = student(images)
        losses = method_loss(cfg.loss.method, out, labels, t_out, num_labeled, cfg.loss)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"non-finite loss at step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items()))
        if cfg.eval.conflict_every and step % cfg.eval.conflict_every == 0:
            conflict = gradient_conflict(student.backbone, out, losses, labels, t_out, num_labeled)
            if conflict is not None:
                metrics.write({"step": step + 1, "epoch": (step + 1) / spe, "conflict": conflict})
        optimizer.zero_grad(set_to_none=True)
        if spec.pcgrad:
            pcgrad_backward([cfg.loss.ce_weight * losses["ce_loss"], cfg.loss.kd_weight * losses["kd_loss"]],
                            list(student.parameters()))
        else:
            losses["loss"].backward()
        optimizer.step()
        scheduler.step()

        epoch_done, epoch = (step + 1) % spe == 0, (step + 1) // spe
        if step % 10 == 0 or step + 1 == steps:
            record = {"step": step + 1, "epoch": (step + 1) / spe, "lr": scheduler.get_last_lr()[0],
                      **{k: round(float(v.detach()), 6) for k, v in losses.items()}}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        if val_views is not None and cfg.eval.eval_every and epoch_done and epoch % cfg.eval.eval_every == 0:
            val_logits = collect_logits(val_views, student, batch_size=cfg.eval.batch_size, device=device)
            mix = tune_mixing(cfg, student, val_logits)
            val_acc = mix.get("val_mixed", score(val_logits)["ce_head"])
            metrics.write({"step": step + 1, "epoch": epoch, "val": score(val_logits, mix["alpha"], mix["beta"])})
            if cfg.eval.keep == "best" and val_acc > best["val"]:
                best = {"val": val_acc, "state": copy.deepcopy(student.state_dict()), "epoch": epoch}
    bar.close()

    # ---- finish: restore best, tune alpha/beta on validation, score test, checkpoint ---------
    if best["state"] is not None:
        student.load_state_dict(best["state"])
        log.info("kept epoch %d (validation %.4f)", best["epoch"], best["val"])
    eval_kw = {"batch_size": cfg.eval.batch_size, "device": device, "progress": progress, "num_workers": d.num_workers}
    eval_teacher = teacher if cfg.eval.teacher else None
    val_logits = collect_logits(val_views, student, eval_teacher, desc="validation", **eval_kw) if val_views else None
    mix = tune_mixing(cfg, student, val_logits)
    student.alpha, student.beta = mix["alpha"], mix["beta"]
    if val_logits is not None and len(val_logits.labels) and student.dual_head:
        write_mixing_grid(run_dir / "mixing_grid.csv", val_logits)
    test_views = EvalViews(store(manifest.test, "test"), eval_size) if manifest.test else None
    test = score(collect_logits(test_views, student, eval_teacher, desc="test", **eval_kw), student.alpha, student.beta) if test_views else {}
    results = {
        "method": cfg.loss.method, "steps": steps, "epochs_kept": best["epoch"] or cfg.optim.epochs,
        **mix, "test": test, "val": score(val_logits, student.alpha, student.beta) if val_logits else {},
        "teacher": teacher.id, "split": manifest.info, "wall_time_s": round(time.time() - started, 2),
    }
    save_checkpoint(student, run_dir / "checkpoint", templates=list(teacher.templates), teacher=teacher.describe(),
                    mixing=mix, config=cfg.to_dict(), split=manifest.info,
                    metrics={"test": test.get("mixed", test.get("ce_head"))})
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    log.info("test accuracy: %s", {k: v for k, v in test.items() if isinstance(v, float)})
    return RunResult(run_dir, results, student)
