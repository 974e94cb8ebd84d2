"""Data-parallel training under ``torchrun``: process group, rank-local device, gathers.

``torchrun --nproc_per_node N -m dho train ...`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; each trains a DistributedDataParallel replica on its rows of every global batch
(NCCL on GPUs, gloo on the CPU). Evaluation splits a dataset into strided shards without padding
and gathers them back in order, so every image is scored exactly once. Only rank 0 writes.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "all_finite", "all_gather_float", "any_across", "average_gradients", "barrier", "gather_rows",
           "init_distributed", "mean_across", "nonfinite_terms", "param_checksum", "shutdown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """The process group from torchrun's environment (a single process without one) and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if device_name == "auto":
            return DistContext(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistContext(), torch.device(device_name)
    ctx = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device("cuda", ctx.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    log.info("distributed: rank %d of %d on %s", ctx.rank, ctx.world_size, device)
    return ctx, device


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_finite(ctx: DistContext, value: Tensor) -> bool:
    """True when ``value`` is finite on every rank (so all ranks stop together, none waits forever)."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if ctx.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def nonfinite_terms(ctx: DistContext, terms: dict[str, Tensor]) -> list[str]:
    """Names of the loss terms that are NaN or infinite on any rank (one all-reduce for all of them)."""
    names = list(terms)
    flags = torch.stack([torch.isfinite(terms[k].detach()).all().float() for k in names])
    if ctx.enabled:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return [k for k, ok in zip(names, flags.tolist()) if not ok]


def any_across(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (e.g. a stop signal), so all ranks act on the same step."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)  # NCCL reduces device tensors only
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_rows(ctx: DistContext, part: Tensor | None, n: int) -> Tensor | None:
    """Rank r holds rows r, r + W, r + 2W, ... of an [n, ...] tensor (CPU); every rank gets all n rows."""
    if not ctx.enabled or part is None:
        return part
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, part)
    full = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
    for r, p in enumerate(parts):
        full[r::ctx.world_size] = p
    return full


@torch.no_grad()
def param_checksum(module: nn.Module) -> float:
    """The float64 sum of every parameter: equal on all ranks when the replicas are in sync."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def all_gather_float(ctx: DistContext, value: float) -> list[float]:
    if not ctx.enabled:
        return [value]
    values: list = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return [float(v) for v in values]


def average_gradients(ctx: DistContext, params: Sequence[Tensor]) -> None:
    """Average ``p.grad`` over ranks in place (for gradients set by hand, outside DDP's hooks)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_across(ctx: DistContext, values: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors -> their mean over ranks, as floats (one all-reduce for the lot)."""
    names = list(values)
    stacked = torch.stack([values[k].reshape(()) for k in names])
    if ctx.enabled:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(names, stacked.tolist()))
