"""Zero-shot CLIP teachers from open_clip: any model name + pretrained tag or local checkpoint."""

from __future__ import annotations

import logging
import os
import socket
import zipfile
from pathlib import Path
from typing import Protocol, cast

import torch
from torch import Tensor

from ..preprocess import Preprocess
from .base import Teacher

__all__ = ["OpenClipTeacher", "cached_clip_weights", "clip_vision_size", "create_clip_model", "wants_quick_gelu"]

HUB_HOST = "huggingface.co"

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


def cached_clip_weights(model_name: str, tag: str) -> str | None:
    """The local file of open_clip's weights ``model_name``/``tag`` when a download left them on
    disk: the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``) for weights on the hub, open_clip's
    own cache (``~/.cache/clip``) for weights fetched from a URL; None when neither holds them."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    if cfg.get("file"):
        return str(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, name = os.path.split(hub)
        name = name or "open_clip_pytorch_model.bin"
        for candidate in ("open_clip_model.safetensors", name) if name == "open_clip_pytorch_model.bin" else (name,):
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached at all (fails at once without a network)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_tag(model_name: str, pretrained: str) -> str:
    """An open_clip tag -> the cached file that holds its weights, the tag itself when they must be
    downloaded, or a one-line error when they are neither on disk nor reachable."""
    import open_clip

    if not open_clip.get_pretrained_cfg(model_name, pretrained):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ValueError(f"open_clip has no weights {pretrained!r} for {model_name} (its tags: {known})")
    cached = cached_clip_weights(model_name, pretrained)
    if cached:
        log.info("open_clip weights %s/%s from %s", model_name, pretrained, cached)
        return cached
    if not _hub_reachable():
        raise RuntimeError(f"open_clip weights {model_name}/{pretrained} are not on this machine and the hub cannot be "
                           "reached; pass a local checkpoint file (teacher.pretrained=PATH) or fetch them once online")
    return pretrained


def create_clip_model(model_name: str, pretrained: str | None, image_size: int | None = None,
                      quick_gelu: bool | None = None) -> torch.nn.Module:
    """An open_clip model by name with weights from a tag or a local file (random without either).
    ``image_size`` builds a ViT for that input size; open_clip interpolates the pretrained
    positional embeddings to its grid. ``quick_gelu`` None: QuickGELU when the weights were
    trained with it (:func:`wants_quick_gelu`); True / False force it on or off."""
    import open_clip

    if pretrained and not Path(pretrained).is_file() and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        raise FileNotFoundError(f"CLIP checkpoint {pretrained!r} does not exist")
    sized: dict = {"force_image_size": image_size} if image_size else {}
    if quick_gelu is None:
        quick_gelu = wants_quick_gelu(model_name, pretrained)
    if quick_gelu:
        log.info("%s built with QuickGELU, the activation its weights were trained with", model_name)
    source = pretrained
    if pretrained and not Path(pretrained).is_file():
        source = _resolve_tag(model_name, pretrained)
        if source != pretrained:  # the tag's own normalisation, which a bare file does not carry
            tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            norm = {k: tag_cfg[k] for k in ("mean", "std") if tag_cfg.get(k)}
            if norm:
                sized["force_preprocess_cfg"] = norm
    try:
        return open_clip.create_model(model_name, pretrained=source or None, load_weights=bool(source),
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
