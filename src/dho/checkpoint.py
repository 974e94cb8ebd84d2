"""Student checkpoints: weights as safetensors plus JSON metadata. Never the teacher; no pickle.

The weights are written first and ``model.json`` last, each atomically (temporary file, fsync,
rename); the metadata records the weights' SHA-256, so a checkpoint whose weights were cut short
or replaced without their metadata is refused on load rather than read.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
from safetensors.torch import load_file, save_file

from .files import DamagedCheckpoint, file_digest, remove_stale_temp, write_file_atomic
from .students import DualHeadStudent, student_from_spec

__all__ = ["FORMAT_VERSION", "CheckpointMeta", "load_metadata", "load_student", "resolve_checkpoint", "save_checkpoint",
           "update_mixing", "versions"]

FORMAT_VERSION = 1
WEIGHTS, METADATA = "model.safetensors", "model.json"


class CheckpointMeta(TypedDict, total=False):
    """``model.json``: what a checkpoint says of itself. The first group is always there; a
    training run adds the rest (``save_checkpoint``'s ``metadata``)."""

    format: str  # "dho-student"
    format_version: int
    classes: list[str]
    architecture: dict[str, Any]  # StudentSpec.to_dict()
    normalization: dict[str, Any]
    input_size: int
    alpha: float
    beta: float
    dual_head: bool
    versions: dict[str, str]
    weights_sha256: str
    templates: list[str]
    teacher: dict[str, Any]  # Teacher.describe()
    mixing: dict[str, Any]  # MixRecord, or what `dho tune` chose
    config: dict[str, Any]  # RunConfig.to_dict()
    split: dict[str, Any]  # SplitInfo
    metrics: dict[str, Any]
    scores: dict[str, Any]
    imported: dict[str, Any]  # a checkpoint of the authors' code brought in by `dho import`


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dho", "torch", "torchvision", "timm", "open_clip_torch", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint as users name it: its directory or one of its files as given, or a run
    directory, whose ``checkpoint/`` it is."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".json") and not (path / METADATA).is_file() \
            and (path / "checkpoint" / METADATA).is_file():
        return path / "checkpoint"
    return path


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) of a checkpoint (:func:`resolve_checkpoint`)."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / WEIGHTS, path / METADATA


def save_checkpoint(student: DualHeadStudent, directory: str | Path, **metadata: Any) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/model.json``.

    ``metadata`` adds e.g. templates, teacher id, resolved config, metrics, split info.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta_path = directory / WEIGHTS, directory / METADATA
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    meta = cast(CheckpointMeta, {  # ``metadata`` may replace any entry but the weights' digest
        "format": "dho-student", "format_version": FORMAT_VERSION, "classes": student.classnames,
        "architecture": student.spec.to_dict(), "normalization": student.preprocess.describe(),
        "input_size": student.preprocess.size, "alpha": student.alpha, "beta": student.beta,
        "dual_head": student.dual_head, "versions": versions(), **metadata,
    })
    write_file_atomic(weights, lambda p: save_file(state, str(p), metadata={"format": "dho-student"}))
    meta["weights_sha256"] = file_digest(weights)
    write_file_atomic(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
    remove_stale_temp(directory)  # left by a writer killed during an earlier save of this checkpoint
    return directory


def load_metadata(path: str | Path) -> CheckpointMeta:
    _, meta_path = _paths(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint metadata at {str(meta_path)!r}")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise DamagedCheckpoint(f"{meta_path} is not valid JSON (damaged or cut short)") from None
    if not isinstance(meta, dict) or meta.get("format") != "dho-student":
        raise ValueError(f"{meta_path} is not a dho student checkpoint")
    return cast(CheckpointMeta, meta)


def load_student(path: str | Path, device: str | torch.device = "cpu") -> DualHeadStudent:
    """A trained student ready for ``predict(images)``: a run's checkpoint directory or its
    ``.safetensors`` file. Rebuilds the architecture offline and cross-checks the classes."""
    weights, _ = _paths(path)
    meta = load_metadata(path)
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {str(weights)!r}")
    if "weights_sha256" not in meta:
        raise DamagedCheckpoint(f"{_paths(path)[1]} has no weights_sha256 (edited, or not written by dho)")
    if file_digest(weights) != meta["weights_sha256"]:
        raise DamagedCheckpoint(f"{weights} does not match its metadata (damaged, or written by another run)")
    classes = meta["classes"]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: the class list repeats a name")
    if meta["architecture"]["num_classes"] != len(classes):
        raise ValueError(f"{path}: metadata lists {len(classes)} classes but the heads have {meta['architecture']['num_classes']}")
    student = student_from_spec(meta["architecture"], classes)
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise DamagedCheckpoint(f"{weights} cannot be read ({type(err).__name__}: {err})") from None
    student.load_state_dict(state, strict=True)
    student.alpha, student.beta = float(meta["alpha"]), float(meta["beta"])
    return student.to(device).eval()


def update_mixing(path: str | Path, alpha: float, beta: float, **info: Any) -> None:
    """Record new (alpha, beta) in a checkpoint's metadata (weights untouched)."""
    _, meta_path = _paths(path)
    meta = load_metadata(path)
    meta["alpha"], meta["beta"] = float(alpha), float(beta)
    cast(dict, meta).update(info)
    write_file_atomic(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
