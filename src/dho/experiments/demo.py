"""The main job: DHO against its baselines on real images with a real-weights teacher, offline.

The teacher zero-shot and few-shot (Tip-Adapter-F fitted on the labeled shots), CE only, CE+KD
(logit) on one head with each teacher, and DHO and DHO-F (each head and the tuned mix) at K shots
per class; alpha/beta tuned on a validation split carved from the training images; accuracy on the
test split. The demo is a preset sweep (:mod:`dho.experiments.sweep`): the teacher's outputs are
computed once per augmented view, kept in ``<out>/teacher_cache``, and replayed by every run.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..device import free_cores
from ..files import write_text_atomic
from .sweep import SweepConfig, run_sweep

__all__ = ["LABELS", "METHODS", "DemoSettings", "run_demo"]

log = logging.getLogger(__name__)

ZERO_SHOT, FEW_SHOT = "zero-shot", "few-shot"
# results.json "accuracy" keys -> (teacher, method, entry of its test scores)
METHODS = {
    "ce": (ZERO_SHOT, "ce", "ce_head"),
    "ce_kd_logit": (ZERO_SHOT, "ce_kd_logit", "ce_head"),
    "dho": (ZERO_SHOT, "dho", "mixed"),
    "dho_ce_head": (ZERO_SHOT, "dho", "ce_head"),
    "dho_kd_head": (ZERO_SHOT, "dho", "kd_head"),
    "ce_kd_logit_f": (FEW_SHOT, "ce_kd_logit", "ce_head"),
    "dho_f": (FEW_SHOT, "dho", "mixed"),
    "dho_f_ce_head": (FEW_SHOT, "dho", "ce_head"),
    "dho_f_kd_head": (FEW_SHOT, "dho", "kd_head"),
}
TEACHERS = {"teacher": ZERO_SHOT, "teacher_f": FEW_SHOT}  # results.json keys of the teacher rows
LABELS = {"teacher": "teacher (zero-shot)", "teacher_f": "teacher (few-shot)", "ce": "CE only",
          "ce_kd_logit": "CE+KD (logit)", "ce_kd_logit_f": "CE+KD-F (logit)", "dho": "DHO (mix)",
          "dho_ce_head": "DHO CE head", "dho_kd_head": "DHO KD head", "dho_f": "DHO-F (mix)",
          "dho_f_ce_head": "DHO-F CE head", "dho_f_kd_head": "DHO-F KD head"}
ROWS = tuple(LABELS)  # the printed and plotted order


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. Defaults fit the 2-core CPU budget (under 10 minutes) on CIFAR-10."""

    shots: int = 16
    seeds: tuple[int, ...] = (0,)
    student: str = "efficientnet_lite0"
    student_pretrained: bool = True
    student_size: int = 64
    teacher: str = "imagenet-bridge"
    teacher_size: int = 160  # the bridge's measured best input size on CIFAR-10 (docs/benchmarks.md)
    view_size: int | None = 32  # CIFAR's native size; each model resizes on its own
    num_views: int = 2
    max_unlabeled: int | None = 5000
    val_fraction: float = 0.02
    test_fraction: float = 0.2  # a tree without test/ (--data DIR): the share of each class the demo scores on
    epochs: int = 40  # 3 steps each at 16 shots x 10 classes (ceil(160 / 64)): 120 steps
    batch_size: int = 64
    lr: float = 1e-3
    precision: str = "auto"  # fp32 / bf16 autocast / auto (see dho.device)

    def run_config(self, root: Path, out: Path) -> RunConfig:
        """The base run of the demo's sweep (shots, seed, method and teacher adapter vary)."""
        return RunConfig().override({
            "teacher.kind": self.teacher, "teacher.image_size": self.teacher_size,
            "student.backbone": self.student, "student.pretrained": self.student_pretrained,
            "student.image_size": self.student_size,
            "data.root": str(root), "data.shots": self.shots,
            "data.val_fraction": self.val_fraction, "data.max_unlabeled": self.max_unlabeled,
            "data.view_size": self.view_size, "data.num_views": self.num_views,
            "data.test_fraction": self.test_fraction,
            "optim.epochs": self.epochs, "optim.batch_size": self.batch_size,
            "optim.lr": self.lr, "out": str(out), "precision": self.precision,
        })

    def sweep(self, workers: int | None = None) -> SweepConfig:
        """The grid: CE, CE+KD and DHO with the zero-shot teacher; CE+KD and DHO with the few-shot one."""
        return SweepConfig(methods=("ce", "ce_kd_logit", "dho"), shots=(self.shots,), seeds=self.seeds,
                           teachers={ZERO_SHOT: {"teacher.adapter": "none"}, FEW_SHOT: {"teacher.adapter": "tip-f"}},
                           teacher_methods={FEW_SHOT: ("ce_kd_logit", "dho")}, workers=workers)


def run_demo(root: Path, out: Path, settings: DemoSettings = DemoSettings(), *, progress: bool = False,
             workers: int | None = None) -> dict[str, Any]:
    """Run the demo's sweep; write ``results.json`` and ``accuracy.png`` into ``out``; return the results.

    A run already finished in ``out`` is kept (the sweep skips it), so an interrupted demo goes on."""
    started = time.time()
    base = settings.run_config(root, out)
    sweep = settings.sweep(workers)
    csv_path = run_sweep(sweep, base, out, progress=progress)
    with csv_path.open() as fh:
        teacher_rows = {(r["teacher"], int(r["seed"])): float(r["test"]) for r in csv.DictReader(fh) if r["method"] == "teacher"}
    cfgs = sweep.runs(base, out)
    runs: dict[str, dict[str, Any]] = {}
    for (label, _, seed, method), cfg in cfgs.items():
        results = json.loads((Path(cfg.out) / "results.json").read_text())
        runs[f"{label}/seed{seed}/{method}"] = {k: results.get(k) for k in ("method", "teacher", "alpha", "beta", "selection",
                                                                          "test", "val", "steps", "wall_time_s")}
    per_seed = []
    for seed in settings.seeds:
        row = {key: teacher_rows[(label, seed)] for key, label in TEACHERS.items()}
        row.update({key: runs[f"{label}/seed{seed}/{method}"]["test"][entry] for key, (label, method, entry) in METHODS.items()})
        per_seed.append(row)
    classes = json.loads((Path(next(iter(cfgs.values())).out) / "splits.json").read_text())["classes"]
    results = {
        **_mean_and_spread(per_seed), "per_seed": dict(zip(map(str, settings.seeds), per_seed)),
        "teacher": runs[f"{ZERO_SHOT}/seed{settings.seeds[0]}/ce_kd_logit"]["teacher"],
        "data": str(root), "classes": classes, "settings": asdict(settings),
        "runs": runs, "workers": sweep.workers or free_cores(), "wall_time_s": round(time.time() - started, 1),
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    plot_accuracy(results, out / "accuracy.png")
    return results


def _mean_and_spread(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each row's mean over seeds (``accuracy``) and population standard deviation (``accuracy_std``)."""
    return {"accuracy": {k: statistics.fmean(a[k] for a in per_seed) for k in ROWS},
            "accuracy_std": {k: statistics.pstdev([a[k] for a in per_seed]) if len(per_seed) > 1 else 0.0 for k in ROWS}}


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of test accuracy per method, with the spread over seeds as error bars."""
    from matplotlib.figure import Figure  # outside pyplot's global state: no backend to choose

    keys = list(ROWS)
    values = [100 * results["accuracy"][k] for k in keys]
    errors = [100 * results["accuracy_std"][k] for k in keys]
    colours = ["#999999", "#666666", "#4C72B0", "#55A868", "#8DBF8B", "#C44E52", "#DD8452", "#8172B3",
               "#8C1C13", "#E8A77B", "#B3A6D6"]
    fig = Figure(figsize=(11, 4.8), dpi=120)
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
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
