"""Worker processes of one torch thread each, for the demo and sweeps.

On a small CPU, two one-thread processes get more done than one process with two threads. With
one worker, jobs run inline in this process behind the same Executor interface.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

import torch

__all__ = ["InlineExecutor", "executor", "shards"]


PARENT_POLL_S = 1.0  # how often a worker looks whether the process that started it is still there


def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="dho-parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent (the pid the parent gave, so that a parent that died while
    this worker started up counts too) is gone, killed or ended without shutting the pool down: an
    orphan would go on running queued jobs into directories its parent's rerun is writing."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


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
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(os.getpid(),))


def shards(items: list, n: int) -> list[list]:
    """``items`` dealt round-robin into ``n`` lists."""
    return [items[i::n] for i in range(n)]
