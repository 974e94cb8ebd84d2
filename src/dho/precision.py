"""Mixed precision: which autocast dtype a run uses, and the context that applies it.

bf16 needs no loss scaling, so one code path serves GPUs and CPUs. ``auto`` is bf16 autocast on
CUDA devices that support it and fp32 on every CPU, with or without native bf16 units: measured on
an AVX512-BF16 CPU (bench/RESULTS.md), bf16 speeds up the teacher and evaluation forwards but slows
the demo's channels-last EfficientNet-Lite0 training step (0.65x) and the demo as a whole (1.29x
longer, the same accuracy); fp32 also gives the same numbers on every CPU. ``bf16`` forces it
(ResNet-18 at 224 px trains 1.9x faster with it on that CPU).
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
    if name == "bf16":
        return torch.bfloat16  # asked for explicitly: honour it, even where it is emulated
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


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
