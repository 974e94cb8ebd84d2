"""Worker processes of one torch thread each, for the demo and sweeps.

On a small CPU, two one-thread processes get more done than one process with two threads. With
one worker, jobs run inline in this process behind the same Executor interface.

Stopping: while a pool is open in the main thread, SIGINT or SIGTERM to its owner stops everything
as Ctrl-C does. The owner raises ``Interrupted`` and tells its workers (SIGUSR1): a training run
finishes its step, saves its state and stops; any other job stops at once; an idle worker waits to
be shut down. Signals a worker gets itself (Ctrl-C reaches the whole process group, and so does a
batch scheduler's SIGTERM; the pool's own ``terminate()`` sends SIGTERM) change nothing more: a run
stops after its step as if told, whatever follows, and another job stops at once; an idle worker
ignores SIGINT and ends on SIGTERM. Only a second signal to the owner ends the workers at once,
saving nothing more. A worker whose owner is gone (kill -9) ends itself within ``PARENT_POLL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import FrameType
from typing import Any

import torch

from .stopping import Interrupted, StoppedAtOnce, StopSignals

__all__ = ["InlineExecutor", "WorkerPool", "executor", "shards"]


PARENT_POLL_S = 1.0  # how often a worker looks whether the process that started it is still there
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TOLD = signal.SIGUSR1  # owner -> worker: stop as the owner was told to
_busy = False  # in a worker: a job is running
_job_stopped = False  # in a worker: the job in progress was asked to stop


def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    StopSignals.at_once = False
    for s in STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
    signal.signal(TOLD, _on_told)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="dho-parent-watch").start()


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """A worker's own SIGINT / SIGTERM outside a training run (which has handlers of its own): a job
    stops now, once; an idle worker leaves SIGINT to its owner, which shuts the pool down, and ends
    on SIGTERM."""
    global _job_stopped
    if _busy:
        if not _job_stopped:
            _job_stopped = True
            raise Interrupted(signum)
    elif signum == signal.SIGTERM:
        os._exit(128 + signum)


def _on_told(signum: int, frame: FrameType | None) -> None:
    if not StopSignals.request(signal.SIGTERM) and _busy:
        _on_stop_signal(signal.SIGTERM, frame)


def _job(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    global _busy, _job_stopped
    _busy, _job_stopped = True, False
    try:
        return fn(*args, **kwargs)
    finally:
        _busy = False


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent (the pid the parent gave, so that a parent that died while
    this worker started up counts too) is gone, killed or ended without shutting the pool down: an
    orphan would go on running queued jobs into directories its parent's rerun is writing."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


@contextlib.contextmanager
def _told_ignored() -> Iterator[None]:
    """Processes started meanwhile ignore ``TOLD`` until their initializer handles it (an ignored
    signal stays ignored across exec): one told while it starts up is not killed by it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(TOLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(TOLD, previous)


class _OwnerSignals:
    """SIGINT / SIGTERM to the process that owns a pool, while the pool is open in its main thread:
    the first tells the workers (``tell(False)``) and raises ``Interrupted``; a second ends them
    (``tell(True)``) and raises ``StoppedAtOnce``. Inside ``with signals.deferred():`` (the pool
    changing its own state: a half-made pool cannot be shut down) the signal waits for the end."""

    def __init__(self, tell: Callable[[bool], None]) -> None:
        self.tell, self.stopping = tell, False
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None  # a signal that came while deferring

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer
        if not outer and self._pending is not None:
            signum, self._pending = self._pending, None
            self._handle(signum, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = signum
            return
        self.tell(self.stopping)
        if self.stopping:
            raise StoppedAtOnce(signum)
        self.stopping = True
        raise Interrupted(signum)


class WorkerPool(ProcessPoolExecutor):
    """``workers`` spawned one-thread processes that stop with their owner (see the module's notes)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                         initargs=(os.getpid(),))
        self._signals = _OwnerSignals(self._tell)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._signals.deferred(), _told_ignored():  # it may start the pool's thread and processes
            return super().submit(_job, fn, *args, **kwargs)

    def _tell(self, at_once: bool) -> None:
        for process in list((self._processes or {}).values()):
            with contextlib.suppress(ProcessLookupError, TypeError):  # gone, or not started (no pid yet)
                os.kill(process.pid, signal.SIGKILL if at_once else TOLD)  # type: ignore[arg-type]

    def __enter__(self) -> WorkerPool:
        self._signals.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)  # waits for the jobs in progress (the runs saving, after a stop)
        finally:
            self._signals.__exit__()


class InlineExecutor(Executor):
    """The Executor interface, running each job at submit time in this process."""

    def __init__(self) -> None:
        self._signals = _OwnerSignals(lambda at_once: None)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # surfaced by future.result(), as a process pool would
            future.set_exception(err)
        return future

    def __enter__(self) -> InlineExecutor:
        self._signals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._signals.__exit__()


def executor(workers: int) -> WorkerPool | InlineExecutor:
    """``workers`` spawned one-thread processes, or inline execution for one worker."""
    return InlineExecutor() if workers <= 1 else WorkerPool(workers)


def shards(items: list, n: int) -> list[list]:
    """``items`` dealt round-robin into ``n`` lists."""
    return [items[i::n] for i in range(n)]
