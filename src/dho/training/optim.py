"""AdamW and the learning-rate schedules of METHOD.md 4, stepped once per training step."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from ..config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    betas = cast("tuple[float, float]", tuple(cfg.betas))  # OptimConfig.betas holds two floats
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> float:
    """Warm-up length in steps; a fraction of the run is kept fractional, as the authors' schedule
    takes ``0.1 * epochs * steps_per_epoch`` unrounded."""
    if cfg.schedule in ("cosine", "constant"):
        return 0
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return cfg.warmup_fraction * total_steps


def lr_factor(step: int, total_steps: int, schedule: str, warmup: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear_warmup":  # linear warm-up, then linear decay to 0
        return max(0.0, 1.0 - progress)
    if schedule in ("cosine", "warmup_cosine"):
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg.schedule, warmup))
