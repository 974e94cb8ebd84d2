"""Side-by-side timing for the benchmarks: candidates run in turn, round after round, in one
process, so drift in the machine's speed hits all of them alike; medians over rounds."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    """One line naming the device this process measures on."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def side_by_side(candidates: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1,
                 calls: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate; each round times ``calls`` calls of every one."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, medians: dict[str, float], ratios: dict[str, tuple[str, str]], per: int | None = None) -> None:
    """Print the medians (and samples/s with ``per`` samples per call) and the named ratios a / b."""
    print(f"\n## {title}")
    for name, t in medians.items():
        rate = f"  {per / t:10.1f} samples/s" if per else ""
        print(f"  {name:<44} {1000 * t:10.2f} ms{rate}")
    for label, (a, b) in ratios.items():
        print(f"  ratio {label:<38} {medians[a] / medians[b]:10.3f}")
