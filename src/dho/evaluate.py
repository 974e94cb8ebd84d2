"""Metrics: accuracy of each head, of the mix, of the teacher; head agreement; a run's alpha/beta
chosen on its validation logits (:func:`tune_mixing`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .config import RunConfig
from .device import cpu_chunk_rows
from .methods import METHOD_SPECS
from .mixing import Mix, default_alpha, mix_probs, search_mixing
from .progress import progress as progress_bar
from .students import DualHeadStudent
from .teachers import Teacher

if TYPE_CHECKING:
    from .data import ImageStore

__all__ = ["Scores", "SplitLogits", "collect_logits", "head_agreement", "own_size_logits", "score", "tune_mixing"]


@dataclass
class SplitLogits:
    """Everything evaluation needs from one pass over a split (all on the CPU)."""

    labels: Tensor  # [N]
    ce: Tensor | None = None  # [N, C]
    kd: Tensor | None = None  # [N, C]
    teacher: Tensor | None = None  # [N, C]


@torch.no_grad()
def collect_logits(views: Dataset, student: DualHeadStudent | None = None, teacher: Teacher | None = None, *,
                   batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = False,
                   desc: str = "eval", num_workers: int = 0) -> SplitLogits:
    """Run the student and/or teacher over eval views [(uint8 image, label)]."""
    was_training = student.training if student is not None else False
    if student is not None:
        student.eval()
    labels, ce, kd, tl = [], [], [], []
    loader = DataLoader(views, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for images, y in progress_bar(loader, desc=desc, enabled=progress, leave=False):
        images = images.to(device, non_blocking=True)
        labels.append(y)
        if student is not None:
            for chunk in images.split(cpu_chunk_rows(images.device, student.preprocess.size) or len(images)):
                out = student(chunk)
                ce.append(out.ce_logits.float().cpu())
                kd.append(out.kd_logits.float().cpu())
        if teacher is not None:
            tl.append(teacher(images).logits.float().cpu())
    if student is not None:
        student.train(was_training)
    cat = lambda xs: torch.cat(xs) if xs else None
    return SplitLogits(torch.cat(labels) if labels else torch.empty(0, dtype=torch.long), cat(ce), cat(kd), cat(tl))


def own_size_logits(store: ImageStore, student: DualHeadStudent, teacher: Teacher | None = None,
                    collect: Callable[..., SplitLogits] = collect_logits, **kw: Any) -> SplitLogits:
    """Logits of every image of ``store`` (an ImageStore), each model on centre crops at its own
    input size, as each is used on its own: the student's are those its exported graph gives.
    ``collect`` runs one model over views (``collect_logits``, or a distributed version of it)."""
    from .data import EvalViews

    logits = collect(EvalViews(store, student.preprocess.size), student, None, **kw)
    if teacher is not None:
        logits.teacher = collect(EvalViews(store, teacher.image_size), None, teacher, **kw).teacher
    return logits


def _accuracy(logits_or_probs: Tensor, labels: Tensor) -> float:
    return float((logits_or_probs.argmax(-1) == labels).double().mean()) if len(labels) else float("nan")


def head_agreement(ce: Tensor, kd: Tensor, labels: Tensor) -> dict[str, int]:
    """Counts of (both right, only CE right, only KD right, both wrong)."""
    ce_ok, kd_ok = ce.argmax(-1) == labels, kd.argmax(-1) == labels
    return {
        "both_right": int((ce_ok & kd_ok).sum()), "only_ce": int((ce_ok & ~kd_ok).sum()),
        "only_kd": int((~ce_ok & kd_ok).sum()), "both_wrong": int((~ce_ok & ~kd_ok).sum()),
    }


class Scores(TypedDict, total=False):
    """A split's accuracies as fractions in [0, 1] (results.json's ``test`` and ``val``)."""

    n: int
    ce_head: float
    kd_head: float
    mixed: float  # the mix at the run's alpha/beta
    teacher: float
    agreement: dict[str, int]  # both right / only CE / only KD / both wrong (head_agreement)


def score(logits: SplitLogits, alpha: float | None = None, beta: float | None = None) -> Scores:
    """Accuracies as fractions in [0, 1]: ``ce_head``, ``kd_head``, ``mixed`` (with alpha/beta),
    ``teacher``; plus head agreement counts when both heads are present."""
    out = Scores(n=len(logits.labels))
    if logits.ce is not None:
        assert logits.kd is not None  # a student's pass gives both heads' logits
        out["ce_head"] = _accuracy(logits.ce, logits.labels)
        out["kd_head"] = _accuracy(logits.kd, logits.labels)
        if alpha is not None and beta is not None:
            out["mixed"] = _accuracy(mix_probs(logits.ce, logits.kd, alpha, beta), logits.labels)
        out["agreement"] = head_agreement(logits.ce, logits.kd, logits.labels)
    if logits.teacher is not None:
        out["teacher"] = _accuracy(logits.teacher, logits.labels)
    return out


def tune_mixing(cfg: RunConfig, student: DualHeadStudent, val_logits: SplitLogits | None) -> Mix:
    """A run's alpha/beta: from the validation grid, or the documented defaults without
    validation data; (1, 1), i.e. h_CE alone, for single-head students and the methods that
    predict with h_CE."""
    if not student.dual_head:
        return Mix(1.0, 1.0, "single head")
    if METHOD_SPECS[cfg.loss.method].predict == "ce_head":
        return Mix(1.0, 1.0, f"{cfg.loss.method} predicts with h_CE")
    if val_logits is None or len(val_logits.labels) == 0:
        return Mix(default_alpha(cfg), cfg.eval.beta, "default (no validation data)")
    assert val_logits.ce is not None and val_logits.kd is not None  # the student's validation logits
    best = search_mixing(val_logits.ce, val_logits.kd, val_logits.labels)
    return Mix(best.alpha, best.beta, "validation grid", best.accuracy)
