"""``dho fit LABELED [--unlabeled POOL]``: from a folder of labeled images (and a pool of unlabeled
ones) to a model to ship, in one command.

1. **Check the data**: every labeled and unlabeled image decoded once (``dho data check``'s
   audit); bad files are left out and listed, huge and tiny ones counted, classes counted.
2. **Ask the teacher**: its zero-shot accuracy on the labeled images, with a warning when it is
   near chance (the few-shot teacher then carries the run, and CE alone may win).
3. **Train** against one teacher store (each view's teacher output computed once): DHO-F (DHO with
   Tip-Adapter-F fitted on the labels) and the CE-only baseline; plain DHO too when the zero-shot
   teacher beats the few-shot one on validation.
4. **Keep the best on validation**, export it (ONNX when onnxruntime is installed, else
   TorchScript) with its model card, and write a per-class accuracy table and a confusion-matrix
   plot, on ``--test`` images when given, else on the validation images.

The budget is sized for a CPU: EfficientNet-Lite0 with its ImageNet weights at 64-128 px (from the
images' own size), ``FitSettings.steps`` steps, ``FitSettings.views`` views of each image.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..files import write_csv_atomic, write_text_atomic

__all__ = ["FitResult", "FitSettings", "fit", "fit_config", "input_size_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    """What ``dho fit`` trains with (any run key can still be set: ``overrides``)."""

    steps: int = 300  # training steps of each model (batch 64 labeled + 64 unlabeled)
    views: int = 2  # augmented views of each image whose teacher outputs are stored
    val_fraction: float = 0.2  # of each class's labeled images, for alpha/beta and the choice of model
    student: str = "efficientnet_lite0"
    seed: int = 1
    overrides: tuple[str, ...] = ()  # key=value for every run (e.g. student.image_size=160)


@dataclass
class FitResult:
    out: Path
    chosen: str  # the method kept: "dho-f", "dho" or "ce"
    val: dict[str, float]  # each model's validation accuracy
    test: dict[str, float] = field(default_factory=dict)  # on --test images
    export: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _student_size(sizes: list[list[int]]) -> int:
    """64-128 px: twice the images' median shorter side, in steps of 32 (CIFAR's 32 px -> 64)."""
    short = statistics.median(min(s) for s in sizes) if sizes else 128
    return int(min(128, max(64, round(2 * short / 32) * 32)))


def input_size_for(root: str | Path, sample: int = 256) -> int:
    """The student input size for the images under ``root`` (:func:`_student_size` of the sizes
    read from the headers of an even sample of up to ``sample`` of them; nothing is decoded)."""
    from PIL import Image

    from ..data.images import IMAGE_EXTENSIONS

    files = sorted(p for p in Path(root).expanduser().rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    sizes = []
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with Image.open(path) as image:
                sizes.append(list(image.size))
        except OSError:  # a bad file: dho data check reports it
            continue
    return _student_size(sizes)


def _check_data(labeled: Path, unlabeled: str | None, out: Path, workers: int) -> tuple[dict, str | None, int]:
    """The audit of both sources: (summary, the unlabeled spec to train on, student size)."""
    from ..data.audit import audit_folder, inspect_files
    from ..data.folders import unlabeled_images

    report = audit_folder(labeled, workers=workers)
    if report.problems:
        raise ValueError(f"{labeled}: {report.problems[0]}")
    good = [f for f in report.files if f["ok"]]
    summary: dict[str, Any] = {"classes": len(report.classes), "labeled": len(good), "bad_labeled": len(report.bad),
                               "odd": report.summary()["odd"]}
    sizes = [f["size"] for f in good if "size" in f]
    spec = None
    if unlabeled:
        paths = [str(p) for p in unlabeled_images(unlabeled)]
        records = inspect_files(paths, workers=workers)
        kept = [r["path"] for r in records if r["ok"]]
        summary.update(unlabeled=len(kept), bad_unlabeled=len(paths) - len(kept))
        if not kept:
            raise ValueError(f"no decodable image in the unlabeled pool {unlabeled}")
        spec = unlabeled if len(kept) == len(paths) else str(out / "unlabeled.txt")
        if spec != unlabeled:
            write_text_atomic(out / "unlabeled.txt", "".join(f"{p}\n" for p in kept))
        sizes += [r["size"] for r in records if r["ok"]][:2000]
    return summary, spec, _student_size(sizes)


def fit_config(labeled: Path, unlabeled: str | None, out: Path, size: int, skip_bad: bool, s: FitSettings) -> RunConfig:
    """The run config every model of ``dho fit`` starts from (method, teacher adapter and ``out``
    are set per model)."""
    keys: dict[str, Any] = {
        "data.root": str(labeled), "data.shots": "all", "data.val_fraction": s.val_fraction, "data.num_views": s.views,
        "data.skip_bad": skip_bad, "data.unlabeled": unlabeled, "student.backbone": s.student, "student.pretrained": True,
        "student.image_size": size, "optim.max_steps": s.steps, "optim.batch_size": 64, "seed": s.seed, "out": str(out)}
    return RunConfig().override(keys).override(list(s.overrides))


def _val_accuracy(results: dict) -> float:
    val = results.get("val") or {}
    return float(val.get("mixed", val.get("ce_head", 0.0)))


def _train_all(base: RunConfig, out: Path, zero_shot_val: float, progress: bool) -> dict[str, dict]:
    from ..loop import train
    from ..training.precompute import cache_teacher

    store = out / "teacher_cache"
    dho_f = base.override({"loss.method": "dho", "teacher.adapter": "tip-f", "teacher.cache": str(store),
                           "out": str(out / "dho-f")})
    cache_teacher(dho_f, store, dtype="float32")
    runs = {"dho-f": dho_f, "ce": base.override({"loss.method": "ce", "teacher.cache": str(store), "out": str(out / "ce")})}
    results: dict[str, dict] = {}
    for name, cfg in runs.items():
        log.info("fit: training %s (%d steps)", name, cfg.optim.max_steps or 0)
        results[name] = dict(train(cfg, progress=progress, overwrite=True).results)
    teacher_f = float((results["dho-f"].get("val") or {}).get("teacher", 0.0))
    if zero_shot_val > teacher_f:  # the zero-shot teacher looks better: plain DHO learns from it
        cfg = dho_f.override({"teacher.adapter": "none", "out": str(out / "dho")})
        log.info("fit: the zero-shot teacher beats the few-shot one on validation (%.1f%% vs %.1f%%): training plain DHO too",
                 100 * zero_shot_val, 100 * teacher_f)
        results["dho"] = dict(train(cfg, progress=progress, overwrite=True).results)
    return results


def _per_class(scored: tuple[Any, Any, Any], where: str, out: Path) -> tuple[float, dict[str, str]]:
    """Accuracy per class and the confusion matrix of the mixed prediction, from a checkpoint's
    (logits, metadata, student) on the test images or the validation ones (``where``)."""
    import torch

    from ..mixing import mix_probs

    logits, meta, student = scored
    assert logits.ce is not None and logits.kd is not None
    probs = mix_probs(logits.ce, logits.kd, student.alpha, student.beta) if student.kd_head is not None else logits.ce
    pred, classes = probs.argmax(-1), list(meta["classes"])
    n = len(classes)
    confusion = torch.bincount(logits.labels * n + pred, minlength=n * n).view(n, n)
    rows = [{"class": c, "images": int(confusion[i].sum()), "correct": int(confusion[i, i]),
             "accuracy": f"{float(confusion[i, i]) / max(1, int(confusion[i].sum())):.4f}"} for i, c in enumerate(classes)]
    write_csv_atomic(out / "per_class.csv", list(rows[0]), rows)
    _plot_confusion(confusion.numpy(), classes, out / "confusion.png", where)
    accuracy = float((pred == logits.labels).float().mean())
    return accuracy, {"per_class": str(out / "per_class.csv"), "confusion": str(out / "confusion.png")}


def _plot_confusion(matrix: Any, classes: list[str], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    side = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes)) if len(classes) <= 40 else []
    ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion on the {where} images (rows sum to 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _export(checkpoint: Path, out: Path) -> dict[str, Any]:
    from ..ship.export import export_checkpoint

    try:
        import onnxruntime  # noqa: F401

        fmt = "onnx"
    except ImportError:
        log.info("fit: onnxruntime is not installed (pip install 'dho[export]'): exporting TorchScript")
        fmt = "torchscript"
    return export_checkpoint(checkpoint, out / "export", fmt, split="val", teacher_speed=False)


def _comparison(out: Path, results: dict[str, dict], chosen: str, test: dict[str, float], card: Path) -> None:
    lines = ["", "## How it was chosen (`dho fit`)", "",
             "| model | validation | test |" if test else "| model | validation |", "|---|---:|---:|" if test else "|---|---:|"]
    for name, r in results.items():
        cell = f" {100 * test[name]:.2f}% |" if name in test else ""
        lines.append(f"| {name}{' (shipped)' if name == chosen else ''} | {100 * _val_accuracy(r):.2f}% |{cell}")
    write_text_atomic(card, card.read_text() + "\n".join(lines) + "\n")


def fit(labeled: str | Path, unlabeled: str | None = None, out: str | Path = "runs/fit", *, test: str | None = None,
        settings: FitSettings = FitSettings(), progress: bool = False, workers: int | None = None) -> FitResult:
    """Check, train, choose, export: see the module's docstring. Returns where everything is."""
    from ..device import free_cores
    from ..experiments.zeroshot import zeroshot_accuracy

    labeled, out = Path(labeled).expanduser(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, spec, size = _check_data(labeled, unlabeled, out, workers or free_cores())
    log.info("fit: %d classes, %d labeled images (%d bad, left out), %s unlabeled; student at %d px", summary["classes"],
             summary["labeled"], summary["bad_labeled"], summary.get("unlabeled", "no"), size)
    base = fit_config(labeled, spec, out, size, summary["bad_labeled"] > 0, settings)
    zero = zeroshot_accuracy(base, "val", progress=progress)
    chance = 1.0 / summary["classes"]
    log.info("fit: the zero-shot teacher gets %.1f%% of the %d validation images (chance %.1f%%)",
             100 * zero["teacher"], zero["n"], 100 * chance)
    if zero["teacher"] < 1.5 * chance:
        log.warning("fit: the zero-shot teacher is near chance on these classes (%.1f%%, chance %.1f%%): DHO-F leans on "
                    "the few-shot teacher, and CE alone may win", 100 * zero["teacher"], 100 * chance)
    results = _train_all(base, out, float(zero["teacher"]), progress)
    chosen = max(results, key=lambda name: _val_accuracy(results[name]))
    checkpoint = out / chosen / "checkpoint"
    from ..evaluate import score
    from ..ship.scoring import checkpoint_logits

    test_scores: dict[str, float] = {}
    shipped = None  # the chosen model's logits on the --test images, scored once
    for name in results if test else ():
        scored = checkpoint_logits(out / name / "checkpoint", "test", test)
        scores = score(scored[0], scored[2].alpha, scored[2].beta)
        test_scores[name] = float(scores.get("mixed", scores.get("ce_head", 0.0)))
        shipped = scored if name == chosen else shipped
    accuracy, files = _per_class(shipped or checkpoint_logits(checkpoint, "val"), "test" if test else "validation", out)
    exported = _export(checkpoint, out)
    if "card" in exported:
        _comparison(out, results, chosen, test_scores, Path(exported["card"]))
        files["card"] = exported["card"]
    files["model"] = exported["path"]
    result = FitResult(out, chosen, {k: _val_accuracy(r) for k, r in results.items()}, test_scores, exported, files)
    write_text_atomic(out / "fit.json", json.dumps({"data": summary, "student_size": size, "teacher_zero_shot_val": zero["teacher"],
                                                     "chosen": chosen, "val": result.val, "test": test_scores,
                                                     "shipped_accuracy": accuracy, "files": files}, indent=1))
    return result
