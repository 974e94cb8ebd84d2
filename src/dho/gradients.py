"""Gradient conflict between the CE and KD objectives: measurement (METHOD.md 7) and PCGrad.

The paper's claim is that single-head CE+KD pulls the shared backbone in conflicting directions
(the cosine between the two gradients drifts negative) while DHO's separate heads keep it
positive. :func:`gradient_conflict` measures that on a training batch, per labeled image as in
the paper's Fig. 4 or over the whole batch; :func:`pcgrad_backward` is the PCGrad baseline
(Yu et al. 2020), which removes the conflicting component instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import HeadOutput
from .teachers.base import TeacherOutput

__all__ = ["gradient_conflict", "pcgrad_backward"]


def _flat_grad(output: Tensor, inputs: Sequence[Tensor], grad_output: Tensor | None = None) -> Tensor:
    """d output / d inputs, flattened and concatenated (zeros for unused inputs); the graph is kept.
    With ``grad_output`` it is the vector-Jacobian product grad_output^T d output / d inputs."""
    grads = torch.autograd.grad(output, inputs, grad_outputs=grad_output, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(x)).flatten() for g, x in zip(grads, inputs)])


def _cosine(a: Tensor, b: Tensor) -> float:
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def _row_cosines(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of each pair of rows of a, b [n, d] -> [n]; NaN where either row is zero."""
    a, b = a.float(), b.float()
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp_min(1e-30), torch.full_like(denom, float("nan")))


def _mean_defined(values: list[float]) -> float | None:
    """Mean of the finite values; None when there is none (e.g. no labeled image has a KD term)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _per_sample_cosines(params: Sequence[Tensor], z: Tensor, ce: Tensor, kd: Tensor, num_labeled: int,
                        max_samples: int | None) -> dict[str, float | None]:
    """Mean over labeled images i of cos(grad of CE_i, grad of KD_i), w.r.t. z_i and w.r.t. ``params``.

    The heads act row by row, so sample i's terms reach z only through z_i and row i of dL/dz
    [B, d] is the gradient of sample i's term, up to the positive 1/N of the batch mean (or the
    1/(N+M) of kd_reduction="mean"), which a cosine ignores; the unlabeled rows' KD terms never
    touch a labeled z_i. W.r.t. the parameters, J^T applied to dL/dz with only row i kept is
    sample i's gradient exactly, BatchNorm's batch coupling included: two backward passes per image.
    """
    g_ce = torch.autograd.grad(ce, z, retain_graph=True, allow_unused=True)[0]
    g_kd = torch.autograd.grad(kd, z, retain_graph=True, allow_unused=True)[0]
    if g_ce is None or g_kd is None:
        return {"cos_params": None, "cos_features": None}
    cos_z = _row_cosines(g_ce[:num_labeled].flatten(1), g_kd[:num_labeled].flatten(1)).tolist()
    cos_theta = []
    for i in range(min(num_labeled, max_samples or num_labeled)):
        if not math.isfinite(cos_z[i]):  # a zero feature gradient makes the parameter one zero too
            continue
        seed_ce, seed_kd = torch.zeros_like(z), torch.zeros_like(z)
        seed_ce[i], seed_kd[i] = g_ce[i], g_kd[i]
        cos_theta.append(_cosine(_flat_grad(z, params, seed_ce).float(), _flat_grad(z, params, seed_kd).float()))
    return {"cos_params": _mean_defined(cos_theta), "cos_features": _mean_defined(cos_z)}


def gradient_conflict(backbone: nn.Module, out: HeadOutput, losses: dict[str, Tensor], labels: Tensor,
                      teacher: TeacherOutput | None, num_labeled: int, *, mode: str = "per_sample",
                      max_samples: int | None = 8) -> dict[str, float | None] | None:
    """Gradient conflict between ``ce_loss`` and ``kd_loss`` on one batch, before the step.

    ``mode="per_sample"`` (the paper's Eq. 5/9 and Fig. 4: per labeled image, then averaged):

    * ``cos_features``: mean over the labeled images i of cos(d CE_i / d z_i, d KD_i / d z_i), where
      CE_i and KD_i are image i's terms of the two losses and z_i [d] its backbone feature;
    * ``cos_params``: mean over the first ``max_samples`` labeled images (None: all) of the cosine
      between CE_i's and KD_i's gradients w.r.t. the shared backbone parameters (flattened). Costs
      two backward passes per image.

    ``mode="batch"``: one cosine between the gradients of the whole-batch losses, w.r.t. the
    backbone parameters (``cos_params``) and the features z [B, d] flattened (``cos_features``);
    unlabeled rows enter through the KD loss.

    * ``pred_term`` (both modes): (p_CE - y)^T (p_KD - p_T) averaged over the labeled rows, with
      p_CE / p_KD the softmax of the head each loss trains (the same head for a single-head
      student) and p_T the teacher's softmax. It is the inner product of the two losses'
      gradients w.r.t. the logits (at temperature 1) when they share a head.

    A cosine is None when no labeled image has both gradients non-zero (e.g. SSKD, whose KD loss
    skips the labeled images). None when the method has no CE or no KD term. Leaves the graph
    intact for the real backward.
    """
    if mode not in ("per_sample", "batch"):
        raise ValueError(f"mode={mode!r}; choose 'per_sample' or 'batch'")
    ce, kd = losses["ce_loss"], losses["kd_loss"]
    if not (ce.requires_grad and kd.requires_grad) or teacher is None or num_labeled == 0:
        return None
    params = [p for p in backbone.parameters() if p.requires_grad]
    if mode == "per_sample":
        record = _per_sample_cosines(params, out.features, ce, kd, num_labeled, max_samples)
    else:
        record = {"cos_params": _cosine(_flat_grad(ce, params), _flat_grad(kd, params)),
                  "cos_features": _cosine(_flat_grad(ce, [out.features]), _flat_grad(kd, [out.features]))}
    with torch.no_grad():
        p_ce = out.ce_logits[:num_labeled].float().softmax(-1)
        p_kd = out.kd_logits[:num_labeled].float().softmax(-1)
        p_t = teacher.logits[:num_labeled].float().softmax(-1)
        y = F.one_hot(labels, p_ce.shape[-1]).float()
        record["pred_term"] = float(((p_ce - y) * (p_kd - p_t)).sum(-1).mean())
    return {k: round(v, 6) if v is not None else None for k, v in record.items()}


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
