"""Teachers by kind. Every teacher is frozen, owns its preprocessing, and is never checkpointed.

:data:`TEACHERS` is the registry: ``teacher.kind`` -> a builder from the config (each imports its
module when called, so naming a kind costs nothing until it is built).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import TeacherConfig
from .base import Teacher, TeacherOutput, prompt_name
from .templates import TEMPLATES, get_templates, templates_for

__all__ = ["TEACHERS", "TEMPLATES", "Teacher", "TeacherOutput", "build_teacher", "get_templates", "prompt_name"]


def _openclip(cfg: TeacherConfig) -> Teacher:
    from .openclip import OpenClipTeacher

    return OpenClipTeacher(cfg.model, cfg.pretrained, zeta=cfg.zeta, image_size=cfg.image_size, quick_gelu=cfg.quick_gelu)


def _imagenet_bridge(cfg: TeacherConfig) -> Teacher:
    from .imagenet_bridge import ImageNetBridgeTeacher

    if cfg.pretrained and not Path(cfg.pretrained).expanduser().is_file():
        raise FileNotFoundError(f"teacher.pretrained={cfg.pretrained!r} is not a file: the imagenet-bridge teacher takes "
                                "a local EfficientNet-Lite0 weights file, or teacher.pretrained=null for the packaged one")
    return ImageNetBridgeTeacher(image_size=cfg.image_size or 160, tau=cfg.bridge_tau, zeta=cfg.zeta, weights=cfg.pretrained,
                                 variant=int(cfg.bridge_backbone[-1]), wordnet=cfg.bridge_wordnet)


def _synthetic(cfg: TeacherConfig) -> Teacher:
    from .synthetic import SyntheticTeacher

    return SyntheticTeacher(cfg.embed_dim, cfg.seed, image_size=cfg.image_size or 32, zeta=cfg.zeta)


TEACHERS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "openclip": _openclip,  # any open_clip model name + pretrained tag or local checkpoint
    "imagenet-bridge": _imagenet_bridge,  # offline: an ImageNet classifier bridged to text
    "synthetic": _synthetic,  # fixed random projections, for tests and tiny runs
}


def build_teacher(cfg: TeacherConfig, classnames: Sequence[str], dataset: str | None = None) -> Teacher:
    """Create the teacher named by ``cfg.kind`` with its zero-shot head for ``classnames``, prompted
    with ``cfg.templates`` ("auto": the benchmark ``dataset``'s own set, METHOD.md 2)."""
    teacher = TEACHERS[cfg.kind](cfg)  # TeacherConfig checks the kind against its annotation
    teacher.set_classes(classnames, get_templates(templates_for(cfg.templates, dataset)), cfg.class_embedding)
    return teacher.freeze()
