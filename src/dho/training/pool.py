"""Worker processes of one torch thread each, for the demo and sweeps.

On a small CPU, two one-thread processes get more done than one process with two threads. With
one worker, jobs run inline in this process behind the same Executor interface.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

import torch

__all__ = ["InlineExecutor", "executor", "shards"]


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


class InlineExecutor(Executor):
    """The Executor interface, running each job at submit time in this process."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # surfaced by future.result(), as a process pool would
            future.set_exception(err)
        return future

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def executor(workers: int) -> Executor | InlineExecutor:
    """``workers`` spawned one-thread processes, or inline execution for one worker."""
    if workers <= 1:
        return InlineExecutor()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


def shards(items: list, n: int) -> list[list]:
    """``items`` dealt round-robin into ``n`` lists."""
    return [items[i::n] for i in range(n)]
