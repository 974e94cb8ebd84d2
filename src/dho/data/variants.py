"""ImageNet's distribution-shift test sets: ImageNet-V2, -Sketch, -R and -A.

A 1000-class ImageNet student is scored on them as they lie on disk. V2 keeps its images in
folders named by class index (0..999); Sketch, R and A in folders named by WordNet id. R and A
cover 200 classes each (the lists in ``lists/``, as the datasets publish them); the manifest
records those classes' indices under ``info["class_subset"]`` and evaluation masks every other
class's logit, so a prediction is always one of the 200.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from torch import Tensor

from .images import IMAGE_EXTENSIONS
from .manifest import SplitInfo, SplitManifest

__all__ = ["VARIANTS", "imagenet_wnids", "mask_logits", "subset_wnids", "variant_manifest"]

VARIANTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a")
SUBSETS = {"imagenet-r": "imagenet_r_wnids.txt", "imagenet-a": "imagenet_a_wnids.txt"}
# where CoOp's layout keeps the images, below the variant's own directory
COOP_IMAGE_DIRS = ("imagenetv2-matched-frequency-format-val", "images", "imagenet-r", "imagenet-a")


def _read_list(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def subset_wnids(name: str) -> list[str]:
    """The 200 WordNet ids of ImageNet-R or ImageNet-A, sorted."""
    return _read_list(files("dho.data").joinpath("lists", SUBSETS[name]).read_text())


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted), as shipped with timm."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def _image_dir(root: Path) -> Path:
    for sub in COOP_IMAGE_DIRS:
        if (root / sub).is_dir() and any(p.is_dir() for p in (root / sub).iterdir()):
            return root / sub
    return root


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def variant_manifest(name: str, root: str | Path, classes: list[str], wnids: list[str] | None = None) -> SplitManifest:
    """Every image of the variant at ``root`` as the ``test`` split of a model with ``classes``
    (ImageNet-1k's, in WordNet-id order; ``wnids`` gives that order when it is not the standard one)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ImageNet variant {name!r}; choose {', '.join(VARIANTS)}")
    wnids = wnids or imagenet_wnids()
    if len(classes) != 1000 or len(wnids) != 1000:
        raise ValueError(f"{name} is scored against the 1000 ImageNet classes; this model has {len(classes)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder {str(root)!r} does not exist")
    images = _image_dir(root)
    index = {w: i for i, w in enumerate(wnids)}
    folders = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[tuple[str, int]] = []
    for folder in folders:
        if name == "imagenet-v2":
            if not folder.isdigit() or int(folder) >= len(wnids):
                raise ValueError(f"{images}: ImageNet-V2 folders are class indices 0..{len(wnids) - 1}, found {folder!r}")
            label = int(folder)
        elif folder in index:
            label = index[folder]
        else:
            raise ValueError(f"{images}: folder {folder!r} is not an ImageNet-1k WordNet id")
        items += [(p.relative_to(images).as_posix(), label) for p in _images(images / folder)]
    if not items:
        raise ValueError(f"no images found under {images}")
    info: SplitInfo = {"test_source": f"{name} at {images}", "variant": name}
    if name in SUBSETS:
        subset = subset_wnids(name)
        stray = sorted(set(folders) - set(subset))
        if stray:
            raise ValueError(f"{images}: folder {stray[0]!r} is not one of the 200 {name} classes")
        info["class_subset"] = sorted(index[w] for w in subset)
    return SplitManifest(str(images.resolve()), list(classes), [], [], [], items, info)


def mask_logits(logits: Tensor | None, subset: list[int] | None) -> Tensor | None:
    """Logits [N, C] with every class outside ``subset`` set to -inf (softmax gives it 0)."""
    if logits is None or subset is None:
        return logits
    keep = logits.new_zeros(logits.shape[-1], dtype=torch.bool)
    keep[list(subset)] = True
    return logits.masked_fill(~keep, float("-inf"))
