"""Loss functions: pure functions of logits returning ``{"loss": total, <named terms>}``.

Every method trains through :func:`method_loss`; :data:`dho.methods.METHOD_SPECS` says which data
streams, heads and teacher outputs a method needs, so the training loop stays the same for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig
from .heads import HeadOutput
from .methods import METHOD_SPECS
from .teachers.base import TeacherOutput

__all__ = ["binary_kd", "binary_kl_norm", "dho_loss", "feature_kd", "kd_kl", "method_loss"]


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over rows ("batchmean")."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def binary_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """A binary KD on the pre-softmax logits (``loss.dhkd=main_head_kd`` only): each class is a
    Bernoulli sigmoid(logit / T); T^2 * sum over classes of KL(teacher || student), averaged over
    rows. [B, C], [B, C] -> []. DHKD's own loss is :func:`binary_kl_norm`."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    p_t = torch.sigmoid(t)
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(-1).mean() * temperature**2


def binary_kl_norm(student_logits: Tensor, teacher_logits: Tensor, temperature: float, eps: float = 1e-8) -> Tensor:
    """DHKD's BinaryKL-Norm: each logit difference x = (s - t) / T is a Bernoulli d = sigmoid(x)
    pulled to 1/2, T^2 * sum over classes of KL(Bern(1/2) || Bern(d)), averaged over rows.
    Per element that is log cosh(x / 2): zero at s = t, growing like |s - t| / (2T) far from it.
    [B, C], [B, C] -> [].

    d is clamped to [eps, 1 - eps] as in the authors' code, done here as the same clamp on x
    (|x| <= logit(1 - eps)), which stays finite in float32, where 1 - 1e-8 rounds to 1.
    """
    bound = math.log((1 - eps) / eps)
    half = ((student_logits.float() - teacher_logits.float()) / temperature).clamp(-bound, bound).abs() / 2
    log_cosh = half + F.softplus(-2 * half) - math.log(2)
    return log_cosh.sum(-1).mean() * temperature**2


def feature_kd(projected: Tensor, teacher_features: Tensor, weight: float) -> Tensor:
    """Feature distillation (CLIP-KD): weight * mean over rows of |normalize(p) - f|^2, where f is the
    teacher's L2-normalised image feature [B, D] and p the student's projected feature [B, D].
    The squared distance is 2 at cos = 0, so weight = ln(C) / 2 matches CE at chance."""
    diff = F.normalize(projected.float(), dim=-1) - teacher_features.float()
    return weight * diff.pow(2).sum(-1).mean()


def _labeled_unlabeled(fn: Callable[..., Tensor], num_labeled: int, n: int, reduction: str, *tensors: Tensor) -> Tensor:
    """fn over all rows ("mean") or fn(labeled rows) + fn(unlabeled rows) ("sum", the authors' code)."""
    if reduction == "mean":
        return fn(*tensors)
    parts = [(a, b) for a, b in ((0, num_labeled), (num_labeled, n)) if b > a]
    total = fn(*(t[parts[0][0]:parts[0][1]] for t in tensors))
    for a, b in parts[1:]:
        total = total + fn(*(t[a:b] for t in tensors))
    return total


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
    then unlabeled rows (``ce_logits`` may hold the labeled rows only). labels: [num_labeled]. CE
    uses the labeled rows of ``ce_logits``; KD
    uses every row of ``kd_logits``. ``kd_reduction="sum"`` (the authors' code) adds the
    batchmean KL of the labeled rows to that of the unlabeled rows; ``"mean"`` takes one
    batchmean over all rows. Both are scaled by T^2.
    """
    if labels.shape[0] != num_labeled:
        raise ValueError(f"labels has {labels.shape[0]} entries but num_labeled={num_labeled}")
    if kd_logits.shape != teacher_logits.shape or ce_logits.shape[1:] != kd_logits.shape[1:] \
            or not num_labeled <= ce_logits.shape[0] <= kd_logits.shape[0]:  # h_CE may skip the unlabeled rows
        raise ValueError(f"logit shapes differ: {tuple(ce_logits.shape)}, {tuple(kd_logits.shape)}, {tuple(teacher_logits.shape)}")
    if kd_reduction not in ("sum", "mean"):
        raise ValueError(f"kd_reduction={kd_reduction!r}; choose 'sum' or 'mean'")
    ce = F.cross_entropy(ce_logits[:num_labeled].float(), labels) if num_labeled > 0 else ce_logits.new_zeros(())
    kd = _labeled_unlabeled(lambda s, t: kd_kl(s, t, temperature), num_labeled, kd_logits.shape[0], kd_reduction,
                            kd_logits, teacher_logits)
    return {"loss": ce_weight * ce + kd_weight * kd, "ce_loss": ce, "kd_loss": kd}


def method_loss(
    method: str, out: HeadOutput, labels: Tensor, teacher: TeacherOutput | None, num_labeled: int, cfg: LossConfig,
) -> dict[str, Tensor]:
    """The loss of ``method`` on a batch laid out as in :func:`dho_loss` (labeled rows first).

    ``ce_loss`` and ``kd_loss`` are the unweighted terms (gradient-conflict diagnostics and PCGrad
    use them); ``loss`` = ce_weight * ce_loss + kd_weight * kd_loss except for the pure methods and
    ``dhkd`` with ``cfg.dhkd="main_head_kd"``, which adds kd_weight * ``aux_loss``.
    """
    if method not in METHOD_SPECS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_SPECS)}")
    n, T = out.ce_logits.shape[0], cfg.temperature
    if method == "ce":
        ce = F.cross_entropy(out.ce_logits[:num_labeled].float(), labels)
        return {"loss": ce, "ce_loss": ce, "kd_loss": torch.zeros_like(ce)}
    if teacher is None:
        raise ValueError(f"method {method!r} needs teacher outputs")
    if method in ("kd_feature", "ce_kd_feature"):
        weight = cfg.feature_weight if cfg.feature_weight is not None else math.log(out.ce_logits.shape[1]) / 2
        assert out.projected is not None  # students of the feature-KD methods are built with a projector
        if method == "kd_feature":
            kd = feature_kd(out.projected[num_labeled:], teacher.features[num_labeled:], weight)
            return {"loss": kd, "ce_loss": torch.zeros_like(kd), "kd_loss": kd}
        kd = _labeled_unlabeled(lambda p, f: feature_kd(p, f, weight), num_labeled, n, cfg.kd_reduction,
                                out.projected, teacher.features)
        ce = F.cross_entropy(out.ce_logits[:num_labeled].float(), labels)
        return {"loss": cfg.ce_weight * ce + cfg.kd_weight * kd, "ce_loss": ce, "kd_loss": kd}
    if method == "kd_logit":
        kd = kd_kl(out.ce_logits[num_labeled:], teacher.logits[num_labeled:], T)
        return {"loss": kd, "ce_loss": torch.zeros_like(kd), "kd_loss": kd}
    if method == "sskd":  # the KD head sees only the unlabeled images
        ce = F.cross_entropy(out.ce_logits[:num_labeled].float(), labels)
        kd = kd_kl(out.kd_logits[num_labeled:], teacher.logits[num_labeled:], T)
        return {"loss": cfg.ce_weight * ce + cfg.kd_weight * kd, "ce_loss": ce, "kd_loss": kd}
    if method == "dhkd":
        return _dhkd_loss(out, labels, teacher, num_labeled, cfg)
    kd_logits = out.kd_logits if method == "dho" else out.ce_logits  # ce_kd_logit, pcgrad: KD on h_CE
    return dho_loss(out.ce_logits, kd_logits, labels, teacher.logits, num_labeled=num_labeled,
                    ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight, temperature=T, kd_reduction=cfg.kd_reduction)


def _dhkd_loss(out: HeadOutput, labels: Tensor, teacher: TeacherOutput, num_labeled: int,
               cfg: LossConfig) -> dict[str, Tensor]:
    """DHKD (Yang et al. 2024) on a labeled-first batch; the student predicts with h_CE.

    ``cfg.dhkd="authors"`` (their code): ce_weight * CE(h_CE, labeled rows) + kd_weight *
    BinaryKL-Norm(auxiliary head, teacher) over every row; h_CE gets no KD term, and ``kd_loss`` is
    the auxiliary head's term. ``"main_head_kd"``: CE + softmax KD on h_CE (``kd_loss``) plus the
    sigmoid-vs-sigmoid :func:`binary_kd` on the auxiliary head (``aux_loss``), also kd_weight.
    """
    n, T = out.ce_logits.shape[0], cfg.temperature
    if cfg.dhkd == "authors":
        ce = F.cross_entropy(out.ce_logits[:num_labeled].float(), labels)
        kd = _labeled_unlabeled(lambda s, t: binary_kl_norm(s, t, T), num_labeled, n, cfg.kd_reduction,
                                out.kd_logits, teacher.logits)
        return {"loss": cfg.ce_weight * ce + cfg.kd_weight * kd, "ce_loss": ce, "kd_loss": kd}
    losses = dho_loss(out.ce_logits, out.ce_logits, labels, teacher.logits, num_labeled=num_labeled,
                      ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight, temperature=T, kd_reduction=cfg.kd_reduction)
    aux = _labeled_unlabeled(lambda s, t: binary_kd(s, t, T), num_labeled, n, cfg.kd_reduction,
                             out.kd_logits, teacher.logits)
    return {**losses, "loss": losses["loss"] + cfg.kd_weight * aux, "aux_loss": aux}
