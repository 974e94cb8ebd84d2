"""Teachers by kind. Every teacher is frozen, owns its preprocessing, and is never checkpointed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import TeacherConfig
from .base import Teacher, TeacherOutput, prompt_name
from .templates import TEMPLATES, get_templates, templates_for

__all__ = ["TEMPLATES", "Teacher", "TeacherOutput", "build_teacher", "get_templates", "prompt_name"]


def build_teacher(cfg: TeacherConfig, classnames: Sequence[str], dataset: str | None = None) -> Teacher:
    """Create the teacher named by ``cfg.kind`` with its zero-shot head for ``classnames``, prompted
    with ``cfg.templates`` ("auto": the benchmark ``dataset``'s own set, METHOD.md 2)."""
    if cfg.kind == "openclip":
        from .openclip import OpenClipTeacher

        teacher: Teacher = OpenClipTeacher(cfg.model, cfg.pretrained, zeta=cfg.zeta, image_size=cfg.image_size,
                                            quick_gelu=cfg.quick_gelu)
    elif cfg.kind == "imagenet-bridge":
        from .imagenet_bridge import ImageNetBridgeTeacher

        if cfg.pretrained and not Path(cfg.pretrained).expanduser().is_file():
            raise FileNotFoundError(f"teacher.pretrained={cfg.pretrained!r} is not a file: the imagenet-bridge teacher takes "
                                    "a local EfficientNet-Lite0 weights file, or teacher.pretrained=null for the packaged one")
        teacher = ImageNetBridgeTeacher(image_size=cfg.image_size or 224, tau=cfg.bridge_tau, zeta=cfg.zeta,
                                        weights=cfg.pretrained)
    elif cfg.kind == "synthetic":
        from .synthetic import SyntheticTeacher

        teacher = SyntheticTeacher(cfg.embed_dim, cfg.seed, image_size=cfg.image_size or 32, zeta=cfg.zeta)
    else:  # pragma: no cover - TeacherConfig validates kind
        raise ValueError(f"unknown teacher kind {cfg.kind!r}")
    teacher.set_classes(classnames, get_templates(templates_for(cfg.templates, dataset)), cfg.class_embedding)
    return teacher.freeze()
