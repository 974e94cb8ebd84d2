"""The student's two heads (METHOD.md 3): linear, cosine (scaled by 1/zeta) and non-linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineHead", "HeadOutput", "MLPHead", "TextHead", "build_head", "init_head_from_embeddings"]


@dataclass
class HeadOutput:
    features: Tensor  # [B, D] backbone features z
    ce_logits: Tensor  # [B, C] from h_CE
    kd_logits: Tensor  # [B, C] from h_KD (the same tensor as ce_logits for single-head students)
    projected: Tensor | None = None  # [B, D_teacher] projector output (feature-KD students)


class CosineHead(nn.Module):
    """logits = (<z / |z|, w_c> + b_c) / zeta, the bias inside the scale as in the authors' code
    (``scale_bias``; so under AdamW it moves the logits 1/zeta times faster), or
    <z / |z|, w_c> / zeta + b_c without. With ``normalize_weight`` the weight rows are normalised
    too (the paper's cos(z, w_c) / zeta); without it, as in the authors' code."""

    def __init__(self, in_features: int, num_classes: int, zeta: float = 0.01, normalize_weight: bool = False,
                 scale_bias: bool = True) -> None:
        super().__init__()
        self.zeta = zeta
        self.normalize_weight = normalize_weight
        self.scale_bias = scale_bias
        linear = nn.Linear(in_features, num_classes)  # PyTorch default init
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, z: Tensor) -> Tensor:
        w = F.normalize(self.weight, dim=-1) if self.normalize_weight else self.weight
        if self.scale_bias:
            return F.linear(F.normalize(z, dim=-1), w, self.bias) / self.zeta
        return F.linear(F.normalize(z, dim=-1), w) / self.zeta + self.bias

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, zeta={self.zeta}, "
                f"normalize_weight={self.normalize_weight}, scale_bias={self.scale_bias}")


class TextHead(nn.Module):
    """A frozen zero-shot classifier on projected features: cos(p, w_c) / zeta with the teacher's
    class embeddings w [C, D] (a buffer, saved with the student). Feature-KD students predict so."""

    embeddings: Tensor  # buffer, registered in __init__

    def __init__(self, embeddings: Tensor, zeta: float = 0.01) -> None:
        super().__init__()
        self.zeta = zeta
        self.register_buffer("embeddings", F.normalize(embeddings.float(), dim=-1))

    def forward(self, projected: Tensor) -> Tensor:
        return F.linear(F.normalize(projected, dim=-1), self.embeddings) / self.zeta


class MLPHead(nn.Sequential):
    """Linear -> LayerNorm -> GELU -> Dropout -> Linear (paper App. E.2)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(in_features, in_features),
            nn.LayerNorm(in_features),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(in_features, num_classes),
        )


def build_head(
    kind: str, in_features: int, num_classes: int, *, zeta: float = 0.01,
    normalize_weight: bool = False, dropout: float = 0.0, scale_bias: bool = True,
) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineHead(in_features, num_classes, zeta, normalize_weight, scale_bias)
    if kind == "mlp":
        return MLPHead(in_features, num_classes, dropout)
    raise ValueError(f"unknown head kind {kind!r}; choose linear, cosine or mlp")


@torch.no_grad()
def init_head_from_embeddings(head: nn.Module, embeddings: Tensor) -> bool:
    """Language-aware init: W = the teacher's class text embeddings [C, D], bias 0.
    Returns False (and changes nothing) when the head's shape does not allow it."""
    target = head[-1] if isinstance(head, MLPHead) else head
    weight = cast(Tensor, target.weight)  # a linear or cosine head's (or an MLP's last linear layer's) parameter
    if isinstance(head, MLPHead) or tuple(weight.shape) != tuple(embeddings.shape):
        return False
    weight.copy_(embeddings.to(weight))
    cast(Tensor, target.bias).zero_()
    return True
