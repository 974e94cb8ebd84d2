"""Gradient conflict between the CE and KD objectives: measurement (METHOD.md 7) and PCGrad.

The paper's claim is that single-head CE+KD pulls the shared backbone in conflicting directions
(the cosine between the two gradients drifts negative) while DHO's separate heads keep it
positive. :func:`gradient_conflict` measures that on a training batch; :func:`pcgrad_backward`
is the PCGrad baseline (Yu et al. 2020), which removes the conflicting component instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import HeadOutput
from .teachers.base import TeacherOutput

__all__ = ["gradient_conflict", "pcgrad_backward"]


def _flat_grad(loss: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(x)).flatten() for g, x in zip(grads, inputs)])


def _cosine(a: Tensor, b: Tensor) -> float:
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def gradient_conflict(backbone: nn.Module, out: HeadOutput, losses: dict[str, Tensor], labels: Tensor,
                      teacher: TeacherOutput | None, num_labeled: int) -> dict[str, float] | None:
    """Cosines between the gradients of ``ce_loss`` and ``kd_loss`` on one batch, before the step.

    * ``cos_params``: w.r.t. the shared backbone parameters (all of them, flattened);
    * ``cos_features``: w.r.t. the features z [B, d] of the batch;
    * ``pred_term``: the prediction-level term (p_CE - y)^T (p_KD - p_T), averaged over the labeled
      rows, with p_CE / p_KD the softmax of the head each loss trains (the same head for a
      single-head student) and p_T the teacher's softmax. It is the inner product of the two
      losses' gradients w.r.t. the logits (at temperature 1) when they share a head.

    None when the method has no CE or no KD term. Leaves the graph intact for the real backward.
    """
    ce, kd = losses["ce_loss"], losses["kd_loss"]
    if not (ce.requires_grad and kd.requires_grad) or teacher is None or num_labeled == 0:
        return None
    params = [p for p in backbone.parameters() if p.requires_grad]
    record = {"cos_params": _cosine(_flat_grad(ce, params), _flat_grad(kd, params)),
              "cos_features": _cosine(_flat_grad(ce, [out.features]), _flat_grad(kd, [out.features]))}
    with torch.no_grad():
        p_ce = out.ce_logits[:num_labeled].float().softmax(-1)
        p_kd = out.kd_logits[:num_labeled].float().softmax(-1)
        p_t = teacher.logits[:num_labeled].float().softmax(-1)
        y = F.one_hot(labels, p_ce.shape[-1]).float()
        record["pred_term"] = float(((p_ce - y) * (p_kd - p_t)).sum(-1).mean())
    return {k: round(v, 6) for k, v in record.items()}


def pcgrad_backward(objectives: Sequence[Tensor], params: Sequence[Tensor]) -> float:
    """Set ``p.grad`` for ``params`` to the PCGrad combination of the objectives' gradients.

    Each task gradient g_i is projected onto the normal plane of every other g_j it conflicts
    with (g_i . g_j < 0), in a fixed order (deterministic; the original shuffles), then summed.
    The objectives carry their weights (e.g. lambda * CE and (1 - lambda) * KD). Returns the
    cosine between the first two raw gradients.
    """
    params = [p for p in params if p.requires_grad]
    grads = [_flat_grad(obj, params) for obj in objectives]
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j, other in enumerate(grads):
            dot = g @ other
            if j != i and dot < 0:
                g -= dot / other.pow(2).sum().clamp_min(1e-20) * other
        projected.append(g)
    total = torch.stack(projected).sum(0)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total[offset:offset + n].view_as(p).clone()
        offset += n
    return _cosine(grads[0], grads[1]) if len(grads) > 1 else float("nan")
