"""Progress on long work: a bar on a terminal, a line every few seconds off one.

:func:`progress` takes tqdm's arguments. With ``enabled`` and stderr a terminal it is a tqdm bar;
with ``enabled`` and stderr a file or a pipe (a job log, CI, ``nohup``) it is a :class:`Lines`
meter that logs ``desc: n/total (p%), elapsed, ~left`` on the ``dho.progress`` logger at most
every :data:`EVERY_S` seconds, plus the last; disabled, it only iterates. The CLI enables it (``-q``
silences the lines with every other INFO line); the library leaves it off unless asked.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["EVERY_S", "Lines", "progress"]

log = logging.getLogger("dho.progress")

EVERY_S = 10.0  # seconds between two progress lines off a terminal


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, seconds = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Lines:
    """tqdm's interface (iteration, ``update``, ``set_postfix``, ``close``, a context manager) as
    periodic log lines. ``clock`` is injectable for tests."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
                 enabled: bool = True, every: float = EVERY_S, clock: Any = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        self.enabled, self.every, self.clock = enabled, every, clock
        self.postfix = ""
        self._start, self._first, self._last = clock(), initial, clock()
        self._lock = threading.Lock()  # updates may come from a pool's callback thread
        self._closed = False

    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "Lines without an iterable: call update()"
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = self.clock()
            if self.enabled and now - self._last >= self.every:
                self._last = now
                self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled and self.n > self._first and self.clock() - self._start >= self.every:
                self._emit(self.clock())  # the last line, when any line was due at all

    def line(self, now: float) -> str:
        elapsed = now - self._start
        done = self.n - self._first
        parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}",
                 f"{_duration(elapsed)} elapsed"]
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"~{_duration(elapsed / done * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _emit(self, now: float) -> None:
        log.info("%s", self.line(now))


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
             enabled: bool = False, leave: bool = True) -> Any:
    """A tqdm bar on a terminal, :class:`Lines` off one (both only when ``enabled``)."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave)
    return Lines(iterable, total=total, desc=desc, initial=initial, enabled=enabled)
