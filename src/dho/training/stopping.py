"""Why a training run stops early: a signal (SIGINT / SIGTERM) or a non-finite loss.

Either way the run first saves a resumable state (``RUN/state/last``) and then raises one of the
errors below, which the CLI turns into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import torch

__all__ = ["BufferGuard", "Interrupted", "NonFiniteLoss", "StopSignals", "StoppedAtOnce", "TrainingInterrupted"]

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after finishing a step and saving its state."""

    def __init__(self, signum: int, step: int, steps: int, state: Path | None, run_dir: Path) -> None:
        self.signum, self.step, self.state = signum, step, state
        self._args = (signum, step, steps, state, run_dir)  # for pickling (process pools)
        where = f"state saved in {state}; continue with: dho train --resume {run_dir}" if state else "no state saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step} of {steps}; {where}")

    def __reduce__(self) -> tuple:
        return type(self), self._args


class NonFiniteLoss(FloatingPointError):
    """A loss term was NaN or infinite; the state of the last good step was saved."""

    def __init__(self, step: int, terms: list[str], values: dict[str, float], state: Path | None) -> None:
        self.step, self.terms, self.state = step, terms, state
        self._args = (step, terms, values, state)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        kept = f"; the state after step {step - 1} is in {state}" if state else ""
        super().__init__(f"non-finite {', '.join(terms)} at step {step} ({shown}){kept}")

    def __reduce__(self) -> tuple:
        return type(self), self._args


class Interrupted(KeyboardInterrupt):
    """A stop signal to a process that owns workers: it stops as Ctrl-C stops it (exit 128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    def __reduce__(self) -> tuple:  # a worker's job ends with it: it crosses back to the pool's owner
        return type(self), (self.signum,)


class StoppedAtOnce(Interrupted):
    """A second stop signal: the process ends now, with that signal's exit code, saving nothing more."""


class StopSignals:
    """Inside ``with StopSignals() as stop:`` SIGINT and SIGTERM set ``stop.signum`` instead of
    ending the process, so the loop can finish its step and save; a second signal raises
    KeyboardInterrupt at once. Off the main thread (no signals there) it changes nothing.

    ``StopSignals.request(signum)`` asks the same of the run in progress in this process without a
    signal of its own (a worker told by its pool's owner): it never stops at once, and the signal the
    process may also get directly (Ctrl-C reaches a whole process group) counts as the first.
    ``StopSignals.at_once = False`` (a pool's worker, whose owner stops it at once when asked twice)
    makes later signals change nothing: the run always saves."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    at_once: ClassVar[bool] = True  # a second signal stops at once
    _active: ClassVar[StopSignals | None] = None  # the run in progress in this process's main thread

    def __init__(self) -> None:
        self.signum: int | None = None
        self._signalled = False  # a stop signal arrived (not only a request)
        self._outer: StopSignals | None = None
        # the handlers signal.signal() replaced, to put back on exit
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            self._outer, StopSignals._active = StopSignals._active, self
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._previous:
            StopSignals._active = self._outer
        self._previous = {}

    @classmethod
    def request(cls, signum: int) -> bool:
        """Ask the run in progress to stop after its step as ``signum`` would; False when none is."""
        stop = cls._active
        if stop is None:
            return False
        if stop.signum is None:
            stop.signum = signum
            log.warning("%s to the process that started this one: finishing this step, then saving the training state",
                        signal.Signals(signum).name)
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._signalled:
            if StopSignals.at_once:
                raise StoppedAtOnce(signum)
            return
        first, self.signum, self._signalled = self.signum is None, signum, True
        if first:
            log.warning("%s: finishing this step, then saving the training state (send it again to stop at once)",
                        signal.Signals(signum).name)


class BufferGuard:
    """The module's buffers (BatchNorm statistics) as they were before a step's forward pass, which
    updates them before its loss can be checked: a non-finite loss puts them back, so the state
    saved then is the last good one, untouched."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.buffers = list(module.buffers()) if module is not None else []
        self.kept = [b.detach().clone() for b in self.buffers]

    def keep(self) -> None:
        for kept, b in zip(self.kept, self.buffers):
            kept.copy_(b)

    def restore(self) -> None:
        for kept, b in zip(self.kept, self.buffers):
            b.copy_(kept)
