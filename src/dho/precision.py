"""Mixed precision: which autocast dtype a device runs fast, and the context that applies it.

bf16 needs no loss scaling, so one code path serves GPUs and CPUs with native bf16 (AVX512-BF16
or AMX). On other CPUs bf16 is emulated and slower than fp32, so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "cpu_has_native_bf16", "precision_name", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``auto`` / ``fp32`` / ``bf16`` on ``device`` -> the autocast dtype, or None for plain fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = device.type == "cpu" and cpu_has_native_bf16()
    if name == "bf16":
        return torch.bfloat16  # asked for explicitly: honour it, even where it is emulated
    return torch.bfloat16 if supported else None


def precision_name(dtype: torch.dtype | None) -> str:
    """An autocast dtype as the name runs record: ``"fp32"`` for None, ``"bf16"``."""
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
