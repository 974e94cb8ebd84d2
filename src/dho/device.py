"""Where and how tensors run: the device, CPU threads, seeding, mixed precision, CPU row chunks.

Mixed precision: bf16 needs no loss scaling, so one code path serves GPUs and CPUs. ``auto`` is
bf16 autocast on CUDA devices that support it and fp32 on every CPU, with or without native bf16
units: measured on an AVX512-BF16 CPU (bench/RESULTS.md), bf16 speeds up the teacher and
evaluation forwards but slows the demo's channels-last EfficientNet-Lite0 training step (0.65x)
and the demo as a whole (1.29x longer, the same accuracy); fp32 also gives the same numbers on
every CPU. ``bf16`` forces it (ResNet-18 at 224 px trains 1.9x faster with it on that CPU).

Row chunks: a convolutional network run on a whole evaluation batch (256 images) keeps activations
that spill out of the CPU's caches; the same rows in chunks of a few hundred thousand input pixels
each run up to 2x faster (EfficientNet-Lite0 on a 2-core EPYC: 32 rows at 64 px, 8 at 160 px, 4 at
224 px). Accelerators get the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["CPU_CHUNK_PIXELS", "PRECISIONS", "autocast", "cpu_chunk_rows", "cpu_has_native_bf16", "free_cores", "precision_name",
           "resolve_device", "resolve_precision", "seed_everything"]

PRECISIONS = ("auto", "fp32", "bf16")
CPU_CHUNK_PIXELS = 180_000


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def free_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def cpu_chunk_rows(device: torch.device | str, image_size: int) -> int:
    """Rows per forward for a model with ``image_size`` px inputs on ``device``; 0 = all at once.

    A power of two near ``CPU_CHUNK_PIXELS / image_size**2`` on the CPU."""
    if torch.device(device).type != "cpu":
        return 0
    return 2 ** max(0, round(math.log2(CPU_CHUNK_PIXELS / image_size**2)))
