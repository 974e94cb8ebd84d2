"""Loss functions: pure functions of logits returning ``{"loss": total, <named terms>}``.

Every method trains through :func:`method_loss`; :data:`METHOD_SPECS` says which data streams,
heads and teacher outputs a method needs, so the training loop stays the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig
from .heads import HeadOutput

__all__ = ["METHOD_SPECS", "MethodSpec", "dho_loss", "kd_kl", "method_loss"]


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over rows ("batchmean")."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def dho_loss(
    ce_logits: Tensor,
    kd_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    *,
    num_labeled: int,
    ce_weight: float = 0.5,
    kd_weight: float = 0.5,
    temperature: float = 2.0,
    kd_reduction: str = "sum",
) -> dict[str, Tensor]:
    """The DHO objective (METHOD.md 4) on a concatenated batch.

    ce_logits, kd_logits, teacher_logits: [B, C], labeled rows first (``num_labeled`` of them),
    then unlabeled rows. labels: [num_labeled]. CE uses the labeled rows of ``ce_logits``; KD
    uses every row of ``kd_logits``. ``kd_reduction="sum"`` (the authors' code) adds the
    batchmean KL of the labeled rows to that of the unlabeled rows; ``"mean"`` takes one
    batchmean over all rows. Both are scaled by T^2.
    """
    if labels.shape[0] != num_labeled:
        raise ValueError(f"labels has {labels.shape[0]} entries but num_labeled={num_labeled}")
    if not ce_logits.shape == kd_logits.shape == teacher_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ce_logits.shape)}, {tuple(kd_logits.shape)}, {tuple(teacher_logits.shape)}")
    if kd_reduction not in ("sum", "mean"):
        raise ValueError(f"kd_reduction={kd_reduction!r}; choose 'sum' or 'mean'")
    zero = ce_logits.new_zeros(())
    ce = F.cross_entropy(ce_logits[:num_labeled].float(), labels) if num_labeled > 0 else zero
    if kd_reduction == "mean":
        kd = kd_kl(kd_logits, teacher_logits, temperature)
    else:
        parts = [(0, num_labeled), (num_labeled, kd_logits.shape[0])]
        kd = sum((kd_kl(kd_logits[a:b], teacher_logits[a:b], temperature) for a, b in parts if b > a), zero)
    return {"loss": ce_weight * ce + kd_weight * kd, "ce_loss": ce, "kd_loss": kd}


@dataclass(frozen=True)
class MethodSpec:
    """What a training method consumes and how its student predicts."""

    labeled: bool  # draws labeled batches
    unlabeled: bool  # draws unlabeled batches
    teacher: bool  # needs teacher logits
    dual_head: bool  # trains two heads and predicts with the alpha/beta mix
    summary: str


METHOD_SPECS: dict[str, MethodSpec] = {
    "dho": MethodSpec(True, True, True, True, "CE head on labeled, KD head on all images; predict with the tuned mix"),
    "ce": MethodSpec(True, False, False, False, "cross-entropy on the labeled images only"),
    "kd_logit": MethodSpec(False, True, True, False, "logit distillation (KL to the teacher) on unlabeled images only"),
    "ce_kd_logit": MethodSpec(True, True, True, False, "one head trained with lambda*CE + (1-lambda)*KD"),
}


def method_loss(
    method: str, out: HeadOutput, labels: Tensor, teacher_logits: Tensor | None, num_labeled: int, cfg: LossConfig,
) -> dict[str, Tensor]:
    """The loss of ``method`` on a batch laid out as in :func:`dho_loss`."""
    if method == "ce":
        ce = F.cross_entropy(out.ce_logits[:num_labeled].float(), labels)
        return {"loss": ce, "ce_loss": ce, "kd_loss": torch.zeros_like(ce)}
    if teacher_logits is None:
        raise ValueError(f"method {method!r} needs teacher logits")
    if method == "kd_logit":
        kd = kd_kl(out.ce_logits[num_labeled:], teacher_logits[num_labeled:], cfg.temperature)
        return {"loss": kd, "ce_loss": torch.zeros_like(kd), "kd_loss": kd}
    kd_logits = out.kd_logits if method == "dho" else out.ce_logits  # ce_kd_logit: one head for both
    if method not in ("dho", "ce_kd_logit"):
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_SPECS)}")
    return dho_loss(
        out.ce_logits, kd_logits, labels, teacher_logits, num_labeled=num_labeled, ce_weight=cfg.ce_weight,
        kd_weight=cfg.kd_weight, temperature=cfg.temperature, kd_reduction=cfg.kd_reduction,
    )
