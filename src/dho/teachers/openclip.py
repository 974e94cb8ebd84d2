"""Zero-shot CLIP teachers from open_clip: any model name + pretrained tag or local checkpoint."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Protocol, cast

import torch
from torch import Tensor

from ..preprocess import Preprocess
from .base import Teacher

__all__ = ["OpenClipTeacher", "clip_vision_size", "create_clip_model", "wants_quick_gelu"]

log = logging.getLogger(__name__)


class _ClipEncoders(Protocol):
    """The two encoders of an open_clip model (not typed by open_clip itself)."""

    def encode_image(self, image: Tensor) -> Tensor: ...

    def encode_text(self, text: Tensor) -> Tensor: ...


class OpenClipTeacher(Teacher):
    """An open_clip model as a frozen teacher.

    ``pretrained`` is an open_clip tag (e.g. ``"openai"``, needs the hub or its cache), a local
    checkpoint file, or None for random weights (tests, speed benchmarks).
    """

    def __init__(
        self,
        model_name: str = "RN50",
        pretrained: str | None = None,
        zeta: float = 0.01,
        image_size: int | None = None,
        quick_gelu: bool | None = None,
    ) -> None:
        import open_clip

        native, resnet = clip_vision_size(model_name)
        resize = image_size is not None and native is not None and image_size != native
        if resize and resnet:
            raise ValueError(f"teacher {model_name} (a CLIP ResNet, fixed attention-pool grid) runs only at its native "
                             f"{native} px, not teacher.image_size={image_size}")
        model = create_clip_model(model_name, pretrained, image_size if resize else None, quick_gelu)
        if resize:
            log.info("teacher %s at %d px: positional embeddings interpolated from its native %d px",
                     model_name, image_size, native)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if image_size is not None and image_size != size:
            log.warning("teacher %s runs at %d px, not the %d px it was built for", model_name, image_size, size)
        super().__init__(Preprocess(cfg["mean"], cfg["std"], image_size or size), zeta=zeta)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        tag = Path(pretrained).name if pretrained and Path(pretrained).is_file() else pretrained
        self.id = f"openclip:{model_name}:{tag or 'random'}"
        self.freeze()

    def encode_image(self, pixels: Tensor) -> Tensor:
        return cast(_ClipEncoders, self.model).encode_image(pixels)

    def encode_text(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        return cast(_ClipEncoders, self.model).encode_text(self.tokenizer(texts).to(device))


def clip_vision_size(model_name: str) -> tuple[int | None, bool]:
    """An open_clip architecture's native input size (None when unknown) and whether its image
    tower is a ResNet (whose attention pool has a fixed grid)."""
    import open_clip

    vision = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {})
    size = vision.get("image_size")
    native = int(size[0] if isinstance(size, (tuple, list)) else size) if size else None
    return native, isinstance(vision.get("layers"), (tuple, list))


def wants_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Whether weights ``pretrained`` were trained with QuickGELU, which open_clip's plain
    architecture names (``RN50``, ``ViT-B-16``) do not build: a tag whose open_clip record says so
    (``openai`` and others), a TorchScript archive (how OpenAI distributes its checkpoints) or a
    local file whose path names OpenAI's weights (e.g. the Hugging Face cache of
    ``timm/resnet50_clip.openai``). Names ending in ``-quickgelu`` have it already."""
    import open_clip

    if not pretrained or model_name.endswith("-quickgelu"):
        return False
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    if "openai" in str(path).lower():
        return True
    if zipfile.is_zipfile(path):  # torch.jit.save archives hold code/ and constants.pkl
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    return False


def create_clip_model(model_name: str, pretrained: str | None, image_size: int | None = None,
                      quick_gelu: bool | None = None) -> torch.nn.Module:
    """An open_clip model by name with weights from a tag or a local file (random without either).
    ``image_size`` builds a ViT for that input size; open_clip interpolates the pretrained
    positional embeddings to its grid. ``quick_gelu`` None: QuickGELU when the weights were
    trained with it (:func:`wants_quick_gelu`); True / False force it on or off."""
    import open_clip

    if pretrained and not Path(pretrained).is_file() and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        raise FileNotFoundError(f"CLIP checkpoint {pretrained!r} does not exist")
    sized = {"force_image_size": image_size} if image_size else {}
    if quick_gelu is None:
        quick_gelu = wants_quick_gelu(model_name, pretrained)
    if quick_gelu:
        log.info("%s built with QuickGELU, the activation its weights were trained with", model_name)
    try:
        return open_clip.create_model(model_name, pretrained=pretrained or None, load_weights=bool(pretrained),
                                      force_quick_gelu=quick_gelu, **sized)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()") from None
        raise
    except Exception as err:  # hub download failures come in many types
        if pretrained and not Path(pretrained).is_file():
            raise RuntimeError(
                f"could not fetch open_clip weights {model_name}/{pretrained} ({type(err).__name__}); "
                "offline, pass a local checkpoint file (teacher.pretrained= or student.weights=)"
            ) from None
        raise
