"""Inference-time mixing of the two heads (METHOD.md 5) and its validation grid search.

p = alpha * softmax(ce_logits) + (1 - alpha) * softmax(kd_logits / beta)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_BETAS", "MixingResult", "mix_probs", "mixing_grid", "search_mixing"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
DEFAULT_BETAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


class MixingResult(NamedTuple):
    alpha: float
    beta: float
    accuracy: float  # fraction in [0, 1]


def mix_probs(ce_logits: Tensor, kd_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """[N, C] logits of each head -> [N, C] mixed probabilities."""
    p_ce = ce_logits.float().softmax(dim=-1)
    p_kd = (kd_logits.float() / beta).softmax(dim=-1)
    return alpha * p_ce + (1.0 - alpha) * p_kd


@torch.no_grad()
def mixing_grid(
    ce_logits: Tensor, kd_logits: Tensor, labels: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS, betas: Sequence[float] = DEFAULT_BETAS,
    max_elements: int = 1 << 25,
) -> Tensor:
    """Accuracy (fraction) of every (beta, alpha) pair: [len(betas), len(alphas)].

    Vectorised over the whole grid; rows are processed in chunks of at most ``max_elements``
    mixed probabilities, so memory stays bounded for large N x C.
    """
    a = torch.tensor(alphas, dtype=torch.float32).view(1, -1, 1, 1)  # [1, A, 1, 1]
    b = torch.tensor(betas, dtype=torch.float32).view(-1, 1, 1)  # [B, 1, 1]
    n, c = ce_logits.shape
    chunk = max(1, max_elements // (a.numel() * b.numel() * c))
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long)
    for start in range(0, n, chunk):
        ce = ce_logits[start:start + chunk].float().cpu()
        kd = kd_logits[start:start + chunk].float().cpu()
        y = labels[start:start + chunk].cpu()
        p_ce = ce.softmax(-1).unsqueeze(0).unsqueeze(0)  # [1, 1, n, C]
        p_kd = (kd.unsqueeze(0) / b).softmax(-1).unsqueeze(1)  # [B, 1, n, C]
        pred = (a * p_ce + (1 - a) * p_kd).argmax(-1)  # [B, A, n]
        correct += (pred == y).sum(-1)
    return correct.double() / max(n, 1)


def search_mixing(
    ce_logits: Tensor, kd_logits: Tensor, labels: Tensor,
    alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
) -> MixingResult:
    """The best (alpha, beta, accuracy) on held-out logits, with the authors' tie rule.

    The authors enumerate beta in the given order, then the KD weight (1 - alpha) upward, and keep
    the first strict improvement. So among equal accuracies the earliest beta wins, and within
    it the largest alpha (most weight on the CE head). Never call this on the test split.
    """
    alphas = tuple(DEFAULT_ALPHAS if alphas is None else alphas)
    betas = tuple(DEFAULT_BETAS if betas is None else betas)
    grid = mixing_grid(ce_logits, kd_logits, labels, alphas, betas)  # [B, A]
    order = sorted(range(len(alphas)), key=lambda i: -alphas[i])  # the authors' enumeration
    flat = grid[:, order].flatten()
    best = int(torch.argmax(flat))  # first maximum
    bi, ai = divmod(best, len(alphas))
    return MixingResult(float(alphas[order[ai]]), float(betas[bi]), float(flat[best]))
