"""Teachers by kind. Every teacher is frozen, owns its preprocessing, and is never checkpointed.

:data:`TEACHERS` is the registry: ``teacher.kind`` -> a builder from the config (each imports its
module when called, so naming a kind costs nothing until it is built).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import RunConfig, TeacherConfig
from .base import Teacher, TeacherOutput, prompt_name
from .templates import TEMPLATES, get_templates, templates_for

__all__ = ["TEACHERS", "TEMPLATES", "Teacher", "TeacherOutput", "build_teacher", "get_templates", "prompt_name",
           "resolve_teacher", "resolve_teacher_kind"]

log = logging.getLogger(__name__)
_NOTED: set[str] = set()  # each auto choice is announced once per process


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


def resolve_teacher_kind(cfg: TeacherConfig) -> TeacherConfig:
    """``teacher.kind=auto`` made concrete, with a one-line note of the choice: an open_clip CLIP
    model when its weights are given (``teacher.pretrained``: a tag or a file) or already on this
    machine (``teacher.model`` with OpenAI's weights in a download cache), else ``imagenet-bridge``,
    the offline stand-in. Other kinds are returned as they are."""
    if cfg.kind != "auto":
        return cfg
    if cfg.pretrained:
        chosen, note = dataclasses.replace(cfg, kind="openclip"), f"open_clip {cfg.model} with weights {cfg.pretrained}"
    else:
        from .openclip import cached_clip_weights

        if cached_clip_weights(cfg.model, "openai"):
            chosen, note = dataclasses.replace(cfg, kind="openclip", pretrained="openai"), \
                f"open_clip {cfg.model} with OpenAI's weights, found on this machine"
        else:
            chosen = dataclasses.replace(cfg, kind="imagenet-bridge")
            note = (f"imagenet-bridge (EfficientNet-{cfg.bridge_backbone[-5:].capitalize()} + a text bridge), the offline "
                    f"stand-in: no CLIP weights for {cfg.model} on this machine (teacher.pretrained=FILE names some)")
    if note not in _NOTED:
        _NOTED.add(note)
        log.info("teacher.kind=auto: %s", note)
    return chosen


def _auto(cfg: TeacherConfig) -> Teacher:
    resolved = resolve_teacher_kind(cfg)
    return TEACHERS[resolved.kind](resolved)


def resolve_teacher(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``teacher.kind=auto`` made concrete (:func:`resolve_teacher_kind`): what a run
    records in its config.yaml and what names its teacher store."""
    return cfg if cfg.teacher.kind != "auto" else dataclasses.replace(cfg, teacher=resolve_teacher_kind(cfg.teacher))


TEACHERS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "auto": lambda cfg: _auto(cfg),  # a real one: open_clip when its weights are here, else imagenet-bridge
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
