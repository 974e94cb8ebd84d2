"""dho: distil a CLIP-family teacher into a small image classifier with Dual-Head Optimization."""

from __future__ import annotations

import logging

from .checkpoint import load_student, save_checkpoint
from .classifier import DHOClassifier
from .config import RunConfig, load_config
from .data import SplitManifest, make_splits
from .losses import dho_loss
from .mixing import mix_probs, search_mixing
from .students import DualHeadStudent, build_student
from .teachers import Teacher, build_teacher
from .train import train

__version__ = "0.1.0"

__all__ = [
    "DHOClassifier", "DualHeadStudent", "RunConfig", "SplitManifest", "Teacher", "build_student", "build_teacher",
    "dho_loss", "load_config", "load_student", "make_splits", "mix_probs", "save_checkpoint",
    "search_mixing", "train",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
