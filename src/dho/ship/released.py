"""The DHO authors' released student checkpoints, converted to this project's format.

Their files are torch dicts: ``model_state_dict`` (keys possibly prefixed ``module.`` by
DistributedDataParallel), ``alpha``, ``beta`` and sometimes ``epoch`` / ``acc``. The students this reads are
``backbone`` (a torchvision model's children up to, not including, the classifier, as an
``nn.Sequential``, so its keys are numbered) plus linear ``ce_head`` and ``kd_head``; or, in the
low-shot ImageNet setting, a CLIP image tower (the same key names as open_clip's) whose KD head
is ``100 * (W normalize(z) + b)``: a cosine head here with its bias inside the scale. Files are
read with ``torch.load(..., weights_only=True)``: nothing in them is executed.

Since their commit f74da67 every one of their scripts mixes the heads as
``a * softmax(ce) + (1 - a) * softmax(kd / beta)``: the saved ``a`` is the CE weight, as alpha here
(``alpha_convention="current"``, the default). Files written by their code before that commit
weighted the KD head with it (``alpha_convention="pre-f74da67"``: alpha = 1 - a). Their scripts
save alpha and beta as numpy float64 scalars; exactly those are allowed when reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from torch import Tensor

from ..checkpoint import save_checkpoint
from ..config import StudentConfig
from ..files import load_torch_file
from ..students import DualHeadStudent, build_student

__all__ = ["ALPHA_CONVENTIONS", "import_checkpoint", "read_class_names"]

ALPHA_CONVENTIONS = ("current", "pre-f74da67")  # their saved alpha weighs h_CE / weighs h_KD

log = logging.getLogger(__name__)


def read_class_names(path: str | Path) -> list[str]:
    """Class names in label order from a text file (one a line), a dho split manifest
    (``splits.json``) or a CoOp split file (``split_zhou_<Name>.json``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class list {str(path)!r} does not exist")
    if path.suffix != ".json":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        return [str(c) for c in data["classes"]]
    try:
        names = {int(y): str(c) for key in ("train", "val", "test") for _, y, c in data[key]}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is neither a dho split manifest nor a CoOp split file") from None
    return [names[i] for i in range(len(names))]


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _convert_keys(state: dict[str, Tensor], student: DualHeadStudent) -> dict[str, Tensor]:
    """Their numbered ``backbone.<i>.`` keys -> our named ones: child i of their Sequential is the
    i-th child of the torchvision model."""
    names = [name for name, _ in student.backbone.named_children()]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "backbone" and len(parts) > 2 and parts[1].isdigit():
            i = int(parts[1])
            if i >= len(names):
                raise ValueError(f"checkpoint key {key!r} has no counterpart in the {student.spec.backbone} backbone")
            key = ".".join(["backbone", names[i], *parts[2:]])
        out[key] = value
    return out


def import_checkpoint(path: str | Path, out: str | Path, arch: str, classes: list[str], *,
                      alpha_convention: str = "current",
                      source: Literal["auto", "timm", "torchvision", "open_clip"] = "torchvision",  # StudentConfig.source
                      image_size: int = 224) -> Path:
    """Convert the authors' ``.pt`` student at ``path`` into a dho checkpoint directory ``out``.
    ``arch`` is the backbone it was trained with: torchvision's resnet18, resnet50 (the DINO
    ResNet-50) or mobilenet_v2, or for a CLIP image tower the open_clip name (OpenAI's towers use
    QuickGELU: ViT-B-16-quickgelu, ViT-L-14-quickgelu, ...); ``classes`` its class names in label
    order; ``image_size`` its input size (336 for ViT-L-14-336)."""
    if alpha_convention not in ALPHA_CONVENTIONS:
        raise ValueError(f"alpha convention {alpha_convention!r} is not one of {', '.join(ALPHA_CONVENTIONS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    raw = load_torch_file(path)
    if not isinstance(raw.get("model_state_dict"), dict):
        raise ValueError(f"{path} has no model_state_dict: not one of the DHO authors' checkpoints")
    state = _strip_prefix(raw["model_state_dict"])
    for head in ("ce_head", "kd_head"):
        if f"{head}.weight" not in state:
            raise ValueError(f"{path} has no {head}.weight: not a dual-head student")
    clip = any(k.startswith(("backbone.transformer.", "backbone.class_embedding", "backbone.attnpool.")) for k in state)
    num_classes, num_features = state["ce_head.weight"].shape
    if num_classes != len(classes):
        raise ValueError(f"the checkpoint's heads have {num_classes} classes, the class list {len(classes)}")
    if clip:  # their KD head: 100 * (W normalize(z) + b), our cosine head with zeta 0.01 and the bias scaled
        cfg = StudentConfig(backbone=arch, source="open_clip", kd_head="cosine", zeta=0.01, cosine_bias="scaled",
                            image_size=image_size, pretrained=False)
    else:  # the weights come from the file
        cfg = StudentConfig(backbone=arch, source=source, image_size=image_size, pretrained=False)
    student = build_student(cfg, classes)
    if student.spec.num_features != num_features:
        raise ValueError(f"{arch} has {student.spec.num_features} features, the checkpoint's heads read "
                         f"{num_features}: pass the --arch it was trained with")
    converted = _convert_keys(state, student)
    expected = student.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ValueError(f"{path} does not fit a {arch} student: {len(missing)} keys missing, "
                         f"{len(unexpected)} unexpected ({first})")
    for key, value in converted.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, a {arch} student {tuple(expected[key].shape)}")
    student.load_state_dict(converted, strict=True)
    theirs = float(raw.get("alpha", 0.5))
    student.alpha = 1.0 - theirs if alpha_convention == "pre-f74da67" else theirs
    student.beta = float(raw.get("beta", 1.0))
    imported = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "alpha_in_file": theirs, "alpha_convention": alpha_convention,
                **{k: raw[k] for k in ("epoch", "acc") if isinstance(raw.get(k), (int, float))}}
    if clip:
        imported["kd_head"] = "cosine, bias inside the scale"
    log.info("imported %s: %s student, %d classes, alpha=%.2f (file: %.2f, %s convention), beta=%.2f",
             path, arch, num_classes, student.alpha, theirs, alpha_convention, student.beta)
    return save_checkpoint(student, out, imported=imported)
