"""dho: distil a CLIP-family teacher into a small image classifier with Dual-Head Optimization.

``import dho`` is light: the names below load their modules (and torch) on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("dho")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

# public name -> the module that defines it
_EXPORTS = {
    "DHOClassifier": "dho.ship.classifier", "DualHeadStudent": "dho.students", "RunConfig": "dho.config",
    "SplitManifest": "dho.data.manifest", "Teacher": "dho.teachers", "build_student": "dho.students",
    "build_teacher": "dho.teachers", "dho_loss": "dho.losses", "load_config": "dho.config",
    "load_student": "dho.checkpoint", "make_splits": "dho.data.splits", "mix_probs": "dho.mixing",
    "save_checkpoint": "dho.checkpoint", "search_mixing": "dho.mixing", "train": "dho.loop",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import load_student as load_student
    from .checkpoint import save_checkpoint as save_checkpoint
    from .config import RunConfig as RunConfig
    from .config import load_config as load_config
    from .data.manifest import SplitManifest as SplitManifest
    from .data.splits import make_splits as make_splits
    from .loop import train as train
    from .losses import dho_loss as dho_loss
    from .mixing import mix_probs as mix_probs
    from .mixing import search_mixing as search_mixing
    from .ship.classifier import DHOClassifier as DHOClassifier
    from .students import DualHeadStudent as DualHeadStudent
    from .students import build_student as build_student
    from .teachers import Teacher as Teacher
    from .teachers import build_teacher as build_teacher


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'dho' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


logging.getLogger(__name__).addHandler(logging.NullHandler())
