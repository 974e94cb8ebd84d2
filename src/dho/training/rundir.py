"""A run's directory, written by one process: under ``torchrun`` rank 0 writes, the other ranks'
calls do nothing, so the training loop never asks which rank it is to write a file.

Layout: config.yaml, splits.json, bad_files.json (when images were left out), metrics.jsonl,
state/ (resumable state, :mod:`dho.training.state`; gone once the run finishes), checkpoint/,
mixing_grid.csv and results.json, written last: its presence means the run finished. Every file
but the appended metrics.jsonl is written atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig, save_config
from ..files import write_text_atomic
from .state import discard_state, save_state

__all__ = ["MetricsLog", "RunDir"]


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (nothing when not ``enabled``).

    A resumed run keeps the records up to the step it resumes from (``keep_until``) and drops the
    later ones, which it is about to write again.
    """

    def __init__(self, path: Path, enabled: bool = True, keep_until: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= keep_until:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
                    continue
        write_text_atomic(path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


class RunDir:
    """The files of the run in ``path``; ``writes`` is False on every rank but rank 0."""

    def __init__(self, path: str | Path, writes: bool) -> None:
        self.path, self.writes = Path(path), writes
        self.state_dir = self.path / "state"

    def start(self, cfg: RunConfig, fresh: bool) -> None:
        """Create the directory and write config.yaml; a ``fresh`` run drops an earlier run's state."""
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            if fresh:
                discard_state(self.state_dir)
            save_config(cfg, self.path / "config.yaml")

    def metrics(self, keep_until: int | None) -> MetricsLog:
        return MetricsLog(self.path / "metrics.jsonl", enabled=self.writes, keep_until=keep_until)

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
