"""Resumable training state: what a run needs to continue exactly where it stopped.

``RUN/state/`` holds (safetensors and JSON only, never pickle)::

    last/       the newest state: tensors.safetensors (student, optimiser moments, RNG states, the
                best student so far), state.json (step, scheduler, optimiser hyper-parameters, RNG
                bookkeeping, best-so-far record, class list, resolved config) and COMPLETE
    previous/   the state before it: when ``last`` is damaged, resuming falls back to it (a warning)
    best/       with ``eval.keep=best``: the best student so far, a checkpoint ``dho eval`` reads

Every directory is written atomically with a completeness marker (:mod:`dho.files`). Restoring
the student, AdamW, the schedule and every RNG (Python, NumPy, torch, CUDA), with the data streams
started at the saved step, continues the run bitwise on the CPU.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..files import MARKER, DamagedCheckpoint, read_marker, write_dir_atomic

__all__ = ["BestEpoch", "TrainState", "config_changes", "discard_state", "load_state", "save_state"]

log = logging.getLogger(__name__)

LAST, PREVIOUS, BEST = "last", "previous", "best"
TENSORS, STATE = "tensors.safetensors", "state.json"
# Keys a resumed run may change: where it runs and how fast, never what it computes.
RESUMABLE_CHANGES = ("out", "device", "threads", "data.root", "data.num_workers", "eval.batch_size", "checkpoint_every")


# ---- nested state dicts <-> (JSON skeleton, flat tensors) --------------------------------------
def _split(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A nested state (dicts, lists, tuples, scalars, tensors) as JSON; tensors go to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        tensors[name] = torch.from_numpy(obj.astype(np.int64))
        return {"__uint32__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{name}.{k}", tensors) for k, v in obj.items()}
        return {"__pairs__": [[k, _split(v, f"{name}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {name} in a training state")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__uint32__" in obj:
        return tensors[obj["__uint32__"]].numpy().astype(np.uint32)
    if "__tuple__" in obj:
        return tuple(_join(v, tensors) for v in obj["__tuple__"])
    if "__pairs__" in obj:
        return {k: _join(v, tensors) for k, v in obj["__pairs__"]}
    return {k: _join(v, tensors) for k, v in obj.items()}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("the saved state has %d CUDA RNG states and this machine %d GPUs: CUDA RNG not restored",
                        len(state["cuda"]), torch.cuda.device_count())


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, current: dict, *, saved_keys_only: bool = False) -> list[str]:
    """``key: old -> new`` for every setting that differs and would change what a resumed run computes;
    ``saved_keys_only``: not the settings ``saved`` lacks (added by a later version, at their defaults)."""
    a, b = _flat(saved), _flat(current)
    keys = set(a) if saved_keys_only else set(a) | set(b)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(keys)
            if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]


@dataclass
class BestEpoch:
    """The best epoch so far by validation accuracy (``eval.keep=best``): its score, epoch, step and
    the student's weights then (None before the first validation)."""

    val: float = -1.0
    epoch: int | None = None
    step: int | None = None
    state: dict[str, torch.Tensor] | None = None

    def record(self) -> dict[str, Any]:
        """What is written beside checkpoints: everything but the weights."""
        return {"val": self.val, "epoch": self.epoch, "step": self.step}


# ---- writing --------------------------------------------------------------------------------
def save_state(root: str | Path, *, step: int, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, best: BestEpoch, classes: list[str], config: dict, reason: str) -> Path:
    """Write ``root/last`` (the old ``last`` becomes ``previous``) after ``step`` completed steps,
    with the best-so-far record ``best`` (its student's weights included)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "format": "dho-train-state", "format_version": 1, "step": step, "reason": reason, "classes": list(classes),
        "config": config, "best": best.record(),
        "model": _split(student.state_dict(), "model", tensors),
        "best_model": _split(best.state, "best_model", tensors) if best.state is not None else None,
        "optimizer": _split(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _split(scheduler.state_dict(), "scheduler", tensors),
        "rng": _split(_rng_state(), "rng", tensors),
    }
    writers = {TENSORS: lambda p: save_file(tensors, str(p), metadata={"format": "dho-train-state"}),
               STATE: lambda p: p.write_text(json.dumps(skeleton))}
    path = write_dir_atomic(root, LAST, writers, marker={"step": step, "reason": reason}, previous=PREVIOUS)
    log.info("training state after step %d saved in %s (%s)", step, path, reason)
    return path


def discard_state(root: str | Path) -> None:
    """Remove the training state of an earlier run in the same directory (a fresh start)."""
    root = Path(root)
    if (root / LAST / MARKER).is_file() or (root / PREVIOUS / MARKER).is_file():
        log.warning("%s holds the resumable state of an earlier run; starting over (dho train --resume continues one)", root)
    shutil.rmtree(root, ignore_errors=True)


# ---- reading --------------------------------------------------------------------------------
@dataclass
class TrainState:
    """A verified training state on disk; :meth:`restore` applies it to freshly built objects."""

    path: Path
    step: int
    skeleton: dict
    tensors: dict[str, torch.Tensor]

    def check_classes(self, classes: list[str]) -> None:
        """The state must belong to this task: the same classes in the same order."""
        if self.skeleton["classes"] != list(classes):
            raise ValueError(f"{self.path} was trained on other classes (or another class order) than the data has now: "
                             f"{self.skeleton['classes'][:5]} vs {list(classes)[:5]}")

    def check_config(self, config: dict) -> None:
        """The state must belong to this configuration (up to :data:`RESUMABLE_CHANGES`)."""
        changes = config_changes(self.skeleton["config"], config)
        if changes:
            raise ValueError(f"cannot resume from {self.path}: the config changed since the run started ("
                             + "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "") + ")")

    def restore(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> BestEpoch:
        """Load student, optimiser, schedule and every RNG; returns the best-so-far record."""
        s, t = self.skeleton, self.tensors
        student.load_state_dict(_join(s["model"], t), strict=True)
        optimizer.load_state_dict(_join(s["optimizer"], t))
        scheduler.load_state_dict(_join(s["scheduler"], t))
        _set_rng_state(_join(s["rng"], t))
        best_state = _join(s["best_model"], t) if s.get("best_model") is not None else None
        b = s["best"]
        return BestEpoch(float(b["val"]), b["epoch"], b["step"], best_state)


def _read(directory: Path) -> TrainState:
    marker = read_marker(directory)
    try:
        skeleton = json.loads((directory / STATE).read_text())
        tensors = load_file(str(directory / TENSORS))
    except Exception as err:
        raise DamagedCheckpoint(f"{directory} cannot be read ({type(err).__name__}: {err})") from None
    if skeleton.get("format") != "dho-train-state" or skeleton.get("step") != marker.get("step"):
        raise DamagedCheckpoint(f"{directory} is not a dho training state")
    return TrainState(directory, int(skeleton["step"]), skeleton, tensors)


def load_state(root: str | Path) -> TrainState | None:
    """The newest usable state under ``root``: ``last``, else ``previous`` with a warning; None when
    there is none at all; DamagedCheckpoint when every one there is damaged."""
    root = Path(root)
    problems = []
    for name in (LAST, PREVIOUS):
        if not (root / name).exists():
            continue
        try:
            state = _read(root / name)
        except DamagedCheckpoint as err:
            fallback = name == LAST and (root / PREVIOUS).exists()
            log.warning("%s; %s", err, "falling back to the previous state" if fallback else "it cannot be used")
            problems.append(str(err))
            continue
        if problems:
            log.warning("resuming from %s (step %d) instead", state.path, state.step)
        return state
    if problems:
        raise DamagedCheckpoint(f"no usable training state in {root}: " + "; ".join(problems))
    return None
