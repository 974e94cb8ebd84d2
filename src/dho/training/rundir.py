"""A run's directory, written by one process: under ``torchrun`` rank 0 writes, the other ranks'
calls do nothing, so the training loop never asks which rank it is to write a file.

Layout: config.yaml, splits.json, bad_files.json (when images were left out), metrics.jsonl,
state/ (resumable state, :mod:`dho.training.state`; gone once the run finishes), checkpoint/,
mixing_grid.csv and results.json, written last: its presence means the run finished. Every file
but the appended metrics.jsonl is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..config import ConfigError, RunConfig, save_config
from ..files import write_text_atomic
from .state import discard_state, save_state

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["MetricsLog", "RunDir", "next_free_run_dir"]

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (nothing when not ``enabled``).

    A resumed run keeps the records up to the step it resumes from (``keep_until``) and drops the
    later ones, which it is about to write again.
    """

    def __init__(self, path: Path, enabled: bool = True, keep_until: int | None = None,
                 tensorboard: Path | None = None) -> None:
        self.path, self.enabled = path, enabled
        self._board: Any = None
        if not enabled:
            return
        if tensorboard is not None:
            self._board = _board_writer(tensorboard, keep_until)
        kept, cut = [], 0
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= keep_until:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
                    cut += 1
        if cut:
            log.warning("%s: %d line(s) were not whole records (cut short by the interruption); dropped", path, cut)
        write_text_atomic(path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self._board is not None:
                for tag, value in _scalars(record):
                    self._board.add_scalar(tag, value, global_step=int(record["step"]))
                self._board.flush()


def _board_writer(folder: Path, keep_until: int | None) -> Any:
    """A TensorBoard SummaryWriter on ``folder``; a resumed run purges the events after its step."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("tensorboard=true needs the tensorboard package: pip install 'dho[tensorboard]'") from None
    return SummaryWriter(str(folder), purge_step=None if keep_until is None else keep_until + 1)


def _scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """A metrics record's numbers as (tag, value): top-level ones under ``train/`` (the step and
    epoch left out), nested ones by their path (``val/mixed``, ``conflict/cos_params``)."""
    out: list[tuple[str, float]] = []
    for key, value in record.items():
        if not prefix and key in ("step", "epoch"):
            continue
        if isinstance(value, dict):
            out += _scalars(value, f"{prefix or ''}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((f"{prefix or 'train/'}{key}", float(value)))
    return out


def next_free_run_dir(path: str | Path, marker: str | None = None) -> Path:
    """``path`` when it holds no run yet, else the first of ``path2``, ``path3``, ... that holds
    none (Ultralytics' naming): a run with the default directory never lands on an earlier one.
    ``marker``: the file that says a directory is taken (default: a run's config.yaml or results.json)."""
    path = Path(path)
    candidate, n = path, 1
    markers = (marker,) if marker else ("config.yaml", "results.json")
    while any((candidate / m).exists() for m in markers):
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    return candidate


class RunDir:
    """The files of the run in ``path``; ``writes`` is False on every rank but rank 0. The writing
    process holds ``path/.lock`` (an advisory lock the system drops when the process ends) from
    :meth:`lock` to :meth:`release`, so two runs never write one directory."""

    def __init__(self, path: str | Path, writes: bool) -> None:
        self.path, self.writes = Path(path), writes
        self.state_dir = self.path / "state"
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        if not self.writes or self._lock is not None or fcntl is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fh = (self.path / ".lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise RuntimeError(f"{self.path} is in use by another dho process{f' (pid {holder})' if holder else ''}; "
                               "give this run another out=DIR") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    def check_fresh(self, overwrite: bool) -> None:
        """A fresh run may not replace a finished or an interrupted one unless ``overwrite``."""
        if overwrite or not self.writes:
            return
        if (self.path / "results.json").is_file():
            raise ConfigError(f"{self.path} holds a finished run: give this run another out=DIR, or replace that one "
                              "with dho train --exist-ok (train(..., overwrite=True))")
        if self.state_dir.is_dir() and any(self.state_dir.iterdir()):
            raise ConfigError(f"{self.path} holds an interrupted run: continue it with dho train --resume {self.path}, "
                              "or start it over with --exist-ok")

    def start(self, cfg: RunConfig, fresh: bool) -> None:
        """Create the directory and write config.yaml; a ``fresh`` run drops an earlier run's state
        and its completion mark (results.json), so what the directory says stays true."""
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            if fresh:
                discard_state(self.state_dir)
                (self.path / "results.json").unlink(missing_ok=True)
            save_config(cfg, self.path / "config.yaml")

    def metrics(self, keep_until: int | None, tensorboard: bool = False) -> MetricsLog:
        return MetricsLog(self.path / "metrics.jsonl", enabled=self.writes, keep_until=keep_until,
                          tensorboard=self.path / "tensorboard" if tensorboard else None)

    def write(self, name: str, writer: Callable[[Path], Any]) -> None:
        """``writer(path / name)``, e.g. ``manifest.save`` or a checkpoint; writers write atomically."""
        if self.writes:
            writer(self.path / name)

    def write_json(self, name: str, value: Any) -> None:
        if self.writes:
            write_text_atomic(self.path / name, json.dumps(value, indent=1))

    def save_state(self, **state: Any) -> Path | None:
        """:func:`dho.training.state.save_state` into ``state/``; None on the ranks that do not write."""
        return save_state(self.state_dir, **state) if self.writes else None

    def finish(self) -> None:
        """The run is complete: its student is checkpoint/, nothing is left to resume."""
        if self.writes:
            shutil.rmtree(self.state_dir, ignore_errors=True)
