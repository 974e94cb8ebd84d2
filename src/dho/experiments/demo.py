"""The main job: DHO against its baselines on real images with a real-weights teacher, offline.

Teacher zero-shot, CE only, CE+KD(logit) on one head, and DHO (each head and the tuned mix) at K
shots per class; alpha/beta tuned on a validation split carved from the training images; accuracy
on the test split. The teacher is built once; its outputs are computed once per augmented view and
replayed across epochs and methods.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data import EvalViews, ImageStore, SplitManifest, TrainViews
from ..data.splits import splits_for
from ..device import free_cores, resolve_precision
from ..evaluate import SplitLogits, score
from ..files import write_text_atomic
from ..loop import train
from ..teachers import build_teacher
from ..teachers.cache import TeacherCache
from ..training.plan import planned_views, training_view_size
from ..training.pool import executor, shards

__all__ = ["METHODS", "DemoSettings", "run_demo"]

log = logging.getLogger(__name__)

# results.json "accuracy" keys -> (method, entry of its test scores)
METHODS = {
    "ce": ("ce", "ce_head"),
    "ce_kd_logit": ("ce_kd_logit", "ce_head"),
    "dho": ("dho", "mixed"),
    "dho_ce_head": ("dho", "ce_head"),
    "dho_kd_head": ("dho", "kd_head"),
}
LABELS = {"teacher": "teacher (zero-shot)", "ce": "CE only", "ce_kd_logit": "CE+KD (logit)", "dho": "DHO (mix)",
          "dho_ce_head": "DHO CE head", "dho_kd_head": "DHO KD head"}


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. Defaults fit the 2-core CPU budget (about 15 minutes) on CIFAR-10."""

    shots: int = 16
    seeds: tuple[int, ...] = (0,)
    student: str = "efficientnet_lite0"
    student_pretrained: bool = True
    student_size: int = 64
    teacher: str = "imagenet-bridge"
    teacher_size: int = 160  # 46.5% zero-shot on the CIFAR-10 test split (43.6% at 128, 46.9% at 224)
    view_size: int | None = 32  # CIFAR's native size; each model resizes on its own
    num_views: int = 2
    max_unlabeled: int | None = 5000
    val_fraction: float = 0.02
    epochs: int = 40  # 3 steps each at 16 shots x 10 classes (ceil(160 / 64)): 120 steps
    batch_size: int = 64
    lr: float = 1e-3
    precision: str = "auto"  # fp32 / bf16 autocast / auto (see dho.device)

    def run_config(self, root: Path, seed: int, method: str, out: Path) -> RunConfig:
        return RunConfig().override({
            "teacher.kind": self.teacher, "teacher.image_size": self.teacher_size,
            "student.backbone": self.student, "student.pretrained": self.student_pretrained,
            "student.image_size": self.student_size,
            "data.root": str(root), "data.shots": self.shots, "data.split_seed": seed,
            "data.val_fraction": self.val_fraction, "data.max_unlabeled": self.max_unlabeled,
            "data.view_size": self.view_size, "data.num_views": self.num_views,
            "loss.method": method, "optim.epochs": self.epochs, "optim.batch_size": self.batch_size,
            "optim.lr": self.lr, "eval.teacher": False, "seed": seed, "out": str(out), "precision": self.precision,
        })


# ---- work that runs in worker processes (one torch thread each) ----------------------------
def _teacher_job(cfg: RunConfig, split: str, keys: list[tuple[int, int]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Teacher features [N, D] and logits [N, C] for (index, view) pairs of a training stream, or
    for test indices (view -1), with their :class:`TeacherCache` keys. Two tensors cross the
    process boundary, not 2N (each tensor sent between processes costs a shared-memory handle)."""
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset)
    teacher.autocast_dtype = resolve_precision(cfg.precision, torch.device("cpu"))  # as train() will run it
    store = ImageStore(manifest, manifest.split(split), in_memory=False)
    size = training_view_size(cfg, teacher.image_size)
    if split == "test":
        eval_views = EvalViews(store, size)
        batch = [(f"test/{i}", eval_views[i][0]) for i, _ in keys]
    else:
        train_views = TrainViews(store, size, cfg.optim.crop_scale, seed=cfg.seed, num_views=cfg.data.num_views)
        batch = [(key, image) for image, _, key in (train_views[k] for k in keys)]
    outs = [teacher(torch.stack([image for _, image in batch[i:i + 128]])) for i in range(0, len(batch), 128)]
    if not outs:
        return [], torch.empty(0), torch.empty(0)
    return [key for key, _ in batch], torch.cat([o.features for o in outs]), torch.cat([o.logits for o in outs])


def _train_job(cfg: RunConfig, keys: list[str], features: torch.Tensor, logits: torch.Tensor) -> dict:
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset)
    result = train(cfg, teacher=teacher, teacher_cache=TeacherCache(teacher, dict(zip(keys, zip(features, logits)))))
    return {k: result.results[k] for k in ("method", "alpha", "beta", "selection", "test", "val", "steps", "wall_time_s")}


# ---- the demo ------------------------------------------------------------------------------
def run_demo(root: Path, out: Path, settings: DemoSettings = DemoSettings(), *, progress: bool = False,
             workers: int | None = None) -> dict:
    """Run every method for every seed; write ``results.json`` and ``accuracy.png`` into ``out``.

    The teacher's outputs are computed once: for the test split and for every training view the
    runs will draw, sharded over ``workers`` processes of one thread each (on a small CPU, two
    such processes get more done than one process with two threads). The methods x seeds then
    train in the same processes, each replaying those outputs.
    """
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or free_cores()
    threads = 1 if workers > 1 else free_cores()
    cfgs = {(seed, m): settings.run_config(root, seed, m, out / f"seed{seed}" / m).override({"threads": threads})
            for seed in settings.seeds for m in ("ce", "ce_kd_logit", "dho")}
    first = cfgs[(settings.seeds[0], "dho")]
    manifest = splits_for(first.data)
    classes = manifest.classes
    teacher_id = build_teacher(first.teacher, classes, first.data.dataset).id  # fails early on a bad teacher; warms its caches

    # Jobs run first in, first out: the CE runs (no teacher) overlap the teacher's work, then the
    # runs that replay the teacher's outputs start as soon as those exist.
    bar = tqdm(total=len(cfgs) + workers + len(settings.seeds) * 2 * workers, desc="demo jobs", disable=not progress)
    with executor(workers) as pool:
        def submit(fn, *args) -> Future:
            future = pool.submit(fn, *args)
            future.add_done_callback(lambda _: bar.update())
            return future

        futures = {(seed, "ce"): submit(_train_job, cfgs[(seed, "ce")], [], torch.empty(0), torch.empty(0)) for seed in settings.seeds}
        test_jobs = [submit(_teacher_job, first, "test", shard) for shard in shards([(i, -1) for i in range(len(manifest.test))], workers)]
        view_jobs = {}
        for seed in settings.seeds:
            cfg = cfgs[(seed, "dho")]
            plan = planned_views(cfg, splits_for(cfg.data))
            view_jobs[seed] = [submit(_teacher_job, cfg, split, shard) for split, keys in plan.items() for shard in shards(keys, workers)]
        for seed in settings.seeds:
            parts = [job.result() for job in view_jobs[seed]]
            keys = [key for part_keys, _, _ in parts for key in part_keys]
            features = torch.cat([f for part_keys, f, _ in parts if part_keys])
            logits = torch.cat([t for part_keys, _, t in parts if part_keys])
            log.info("seed %d: teacher outputs for %d training views", seed, len(keys))
            for method in ("dho", "ce_kd_logit"):
                futures[(seed, method)] = submit(_train_job, cfgs[(seed, method)], keys, features, logits)
        test_parts = [job.result() for job in test_jobs]
        runs = {f"seed{seed}/{method}": futures[(seed, method)].result() for seed, method in sorted(futures)}
    bar.close()
    teacher_acc = _teacher_accuracy(test_parts, manifest)
    per_seed = [{"teacher": teacher_acc, **{key: runs[f"seed{seed}/{method}"]["test"][entry]
                                            for key, (method, entry) in METHODS.items()}} for seed in settings.seeds]
    results = {
        **_mean_and_spread(per_seed), "per_seed": dict(zip(map(str, settings.seeds), per_seed)),
        "teacher": teacher_id, "data": str(root), "classes": classes, "settings": asdict(settings),
        "runs": runs, "workers": workers, "wall_time_s": round(time.time() - started, 1),
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    plot_accuracy(results, out / "accuracy.png")
    return results


def _teacher_accuracy(test_parts: list, manifest: SplitManifest) -> float:
    """The teacher's zero-shot test accuracy from the workers' shards of test logits."""
    test_keys = [key for keys, _, _ in test_parts for key in keys]
    test_rows = torch.cat([logits for keys, _, logits in test_parts if keys])
    row_of = {key: row for row, key in enumerate(test_keys)}
    teacher_logits = test_rows[[row_of[f"test/{i}"] for i in range(len(manifest.test))]]
    test_labels = torch.tensor([y for _, y in manifest.test])
    accuracy = score(SplitLogits(test_labels, teacher=teacher_logits))["teacher"]
    log.info("teacher zero-shot test accuracy %.4f", accuracy)
    return accuracy


def _mean_and_spread(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each row's mean over seeds (``accuracy``) and population standard deviation (``accuracy_std``)."""
    keys = ["teacher", *METHODS]
    return {"accuracy": {k: statistics.fmean(a[k] for a in per_seed) for k in keys},
            "accuracy_std": {k: statistics.pstdev([a[k] for a in per_seed]) if len(per_seed) > 1 else 0.0 for k in keys}}


def plot_accuracy(results: dict, path: Path) -> Path:
    """Bar chart of test accuracy per method, with the spread over seeds as error bars."""
    from matplotlib.figure import Figure  # outside pyplot's global state: no backend to choose

    keys = ["teacher", *METHODS]
    values = [100 * results["accuracy"][k] for k in keys]
    errors = [100 * results["accuracy_std"][k] for k in keys]
    colours = ["#999999", "#4C72B0", "#55A868", "#C44E52", "#DD8452", "#8172B3"]
    fig = Figure(figsize=(8, 4.2), dpi=120)
    ax = fig.subplots()
    seeds = len(results["per_seed"])
    bars = ax.bar([LABELS[k] for k in keys], values, yerr=errors if seeds > 1 else None, color=colours, capsize=4)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                    xytext=(0, 3), textcoords="offset points", fontsize=9)
    s = results["settings"]
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{s['student']} student, {s['shots']} shots/class, {seeds} seed{'s' * (seeds > 1)}; "
                 f"teacher {results['teacher'].split(':')[0]}")
    ax.set_ylim(0, max(values) * 1.15)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
