"""Inference-time mixing of the two heads (METHOD.md 5) and its validation grid search.

p = alpha * softmax(ce_logits) + (1 - alpha) * softmax(kd_logits / beta)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypedDict

import torch
from torch import Tensor

from .files import write_text_atomic

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_BETAS", "Mix", "MixRecord", "MixingResult", "default_alpha", "head_probs", "mix_probs", "mixing_grid",
           "search_mixing", "write_grid_csv"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
DEFAULT_BETAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


class MixingResult(NamedTuple):
    alpha: float
    beta: float
    accuracy: float  # fraction in [0, 1]


def head_probs(ce_logits: Tensor, kd_logits: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """[N, C] logits of each head -> each head's [N, C] probabilities, h_KD's at temperature beta."""
    return ce_logits.float().softmax(dim=-1), (kd_logits.float() / beta).softmax(dim=-1)


def mix_probs(ce_logits: Tensor, kd_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """[N, C] logits of each head -> [N, C] mixed probabilities (every prediction path uses this)."""
    p_ce, p_kd = head_probs(ce_logits, kd_logits, beta)
    return alpha * p_ce + (1.0 - alpha) * p_kd


@torch.no_grad()
def mixing_grid(
    ce_logits: Tensor, kd_logits: Tensor, labels: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS, betas: Sequence[float] = DEFAULT_BETAS,
    max_elements: int = 1 << 20,
) -> Tensor:
    """Accuracy (fraction) of every (beta, alpha) pair: [len(betas), len(alphas)].

    Vectorised over all alphas at once; for each beta, rows go in chunks of at most
    ``max_elements`` mixed probabilities ([A, rows, C]), small enough to stay in cache.
    """
    a = torch.tensor(alphas, dtype=torch.float32).view(-1, 1, 1)  # [A, 1, 1]
    n, c = ce_logits.shape
    chunk = max(1, max_elements // (len(alphas) * c))
    p_ce_all = ce_logits.float().cpu().softmax(-1)
    kd_all, y_all = kd_logits.float().cpu(), labels.cpu()
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long)
    for bi, beta in enumerate(betas):
        p_kd_all = (kd_all / beta).softmax(-1)
        for start in range(0, n, chunk):
            p_ce, p_kd = p_ce_all[start:start + chunk], p_kd_all[start:start + chunk]
            mixed = a * p_ce + (1 - a) * p_kd  # [A, rows, C], same arithmetic as mix_probs
            correct[bi] += (mixed.argmax(-1) == y_all[start:start + chunk]).sum(-1)
    return correct.double() / max(n, 1)


def search_mixing(
    ce_logits: Tensor, kd_logits: Tensor, labels: Tensor,
    alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
) -> MixingResult:
    """The best (alpha, beta, accuracy) on held-out logits, with the authors' tie rule.

    The authors' search runs beta in the given order, then alpha (the CE weight) upward, and keeps
    the first strict improvement: among equal accuracies the earliest beta wins, and within it
    the smallest alpha (most weight on the KD head). Never call this on the test split.
    """
    alphas = tuple(DEFAULT_ALPHAS if alphas is None else alphas)
    betas = tuple(DEFAULT_BETAS if betas is None else betas)
    grid = mixing_grid(ce_logits, kd_logits, labels, alphas, betas)  # [B, A]
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])  # alpha upward, as the authors enumerate
    flat = grid[:, order].flatten()
    best = int(torch.argmax(flat))  # first maximum = first strict improvement
    bi, ai = divmod(best, len(alphas))
    return MixingResult(float(alphas[order[ai]]), float(betas[bi]), float(flat[best]))


def default_alpha(cfg: RunConfig) -> float:
    """alpha without validation data (``cfg`` a RunConfig): ``eval.alpha`` when set, else the
    paper's choice: 0.5 in the low-shot setting (a labeled fraction), 0.2 with a few-shot teacher,
    0.4 with a zero-shot one."""
    if cfg.eval.alpha is not None:
        return cfg.eval.alpha
    if cfg.data.shots is None:
        return 0.5
    return 0.2 if cfg.adapter != "none" else 0.4


class MixRecord(TypedDict, total=False):
    """A :class:`Mix` as results.json and checkpoints record it."""

    alpha: float
    beta: float
    selection: str
    val_mixed: float  # only when searched


@dataclass(frozen=True)
class Mix:
    """A run's alpha/beta and how they were chosen; ``val_mixed`` is the validation accuracy of the
    grid search's choice (None when there was no search)."""

    alpha: float
    beta: float
    selection: str
    val_mixed: float | None = None

    def as_dict(self) -> MixRecord:
        """As results.json and checkpoints record it (``val_mixed`` only when searched)."""
        out = MixRecord(alpha=self.alpha, beta=self.beta, selection=self.selection)
        if self.val_mixed is not None:
            out["val_mixed"] = self.val_mixed
        return out


def write_grid_csv(path: str | Path, ce_logits: Tensor, kd_logits: Tensor, labels: Tensor) -> None:
    """The accuracy of every (alpha, beta) of the default grid as CSV rows ``alpha,beta,accuracy``
    (the heat maps of `dho report`)."""
    grid = mixing_grid(ce_logits, kd_logits, labels)  # [betas, alphas]
    rows = ["alpha,beta,accuracy"] + [f"{a:g},{b:g},{float(grid[bi, ai]):.6f}" for bi, b in enumerate(DEFAULT_BETAS)
                                      for ai, a in enumerate(DEFAULT_ALPHAS)]
    write_text_atomic(path, "\n".join(rows) + "\n")
