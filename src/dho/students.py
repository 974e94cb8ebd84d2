"""Students: a timm, torchvision or open_clip (CLIP image tower) backbone by short name plus the
two heads (METHOD.md 3)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import create_backbone, resolve_source
from .config import StudentConfig
from .heads import HeadOutput, TextHead, build_head, init_head_from_embeddings
from .mixing import mix_probs
from .preprocess import Preprocess

__all__ = ["DualHeadStudent", "Prediction", "StudentSpec", "assemble_student", "build_student", "student_from_spec"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    indices: Tensor  # [N] (or [N, k] with topk) predicted class indices
    probs: Tensor  # [N, C] mixed probabilities
    labels: list  # class names of ``indices``

    @property
    def scores(self) -> Tensor:
        """The mixed probability of each predicted class: [N] (or [N, k] with topk)."""
        if self.indices.dim() == 1:
            return self.probs.gather(1, self.indices[:, None])[:, 0]
        return self.probs.gather(1, self.indices)


class DualHeadStudent(nn.Module):
    """Backbone g and heads h_CE, h_KD on the same features z. A single-head student (baselines)
    has one head whose logits serve as both ``ce_logits`` and ``kd_logits``. Feature-KD students
    add a linear ``projector`` z -> teacher feature space; a ``TextHead`` as h_CE reads its output."""

    def __init__(self, backbone: nn.Module, preprocess: Preprocess, ce_head: nn.Module,
                 kd_head: nn.Module | None, spec: StudentSpec, classnames: Sequence[str],
                 projector: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.preprocess, self.ce_head, self.kd_head = backbone, preprocess, ce_head, kd_head
        self.projector = projector
        self.spec = spec
        self.classnames = list(classnames)
        self.alpha, self.beta = (0.5, 1.0) if kd_head is not None else (1.0, 1.0)
        self.frozen_backbone = False

    def freeze_backbone(self) -> DualHeadStudent:
        """Heads-only training: the backbone keeps its weights and BatchNorm statistics."""
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.frozen_backbone = True
        return self

    def train(self, mode: bool = True) -> DualHeadStudent:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] images [B, 3, H, W] -> backbone features [B, D] in eval mode."""
        was_training = self.training
        self.eval()
        z = self.backbone(self.preprocess(images))
        self.train(was_training)
        return z

    @property
    def dual_head(self) -> bool:
        return self.kd_head is not None

    def forward(self, images: Tensor | None = None, *, features: Tensor | None = None,
                split: int | None = None, ce_rows: int | None = None) -> HeadOutput:
        """uint8 or [0, 1] images [B, 3, H, W] -> features and both heads' logits; or, for a frozen
        backbone whose features [B, D] were computed before, ``features=`` -> the heads' logits.
        ``split``: rows [:split] and [split:] go through the backbone in two passes, so each has
        its own BatchNorm batch statistics (the labeled and the unlabeled batch of a step).
        ``ce_rows``: h_CE on the first rows only (a dual-head student whose loss reads h_CE on the
        labeled rows alone: DHO's heads-only steps, where the heads are all the work)."""
        if (images is None) == (features is None):
            raise ValueError("pass images or features=, not both")
        if images is not None and split is not None and 0 < split < len(images):
            z = torch.cat([self.backbone(self.preprocess(part)) for part in (images[:split], images[split:])])
        elif images is not None:
            z = self.backbone(self.preprocess(images))
        else:
            assert features is not None  # exactly one of images and features is given (checked above)
            z = features
        projected = self.projector(z) if self.projector is not None else None
        ce_in = projected if isinstance(self.ce_head, TextHead) else z
        assert ce_in is not None  # a text head comes with its projector
        ce = self.ce_head(ce_in if ce_rows is None or self.kd_head is None else ce_in[:ce_rows])
        return HeadOutput(z, ce, self.kd_head(z) if self.kd_head is not None else ce, projected)

    @torch.no_grad()
    def predict(self, images: Any, alpha: float | None = None, beta: float | None = None,
                topk: int | None = None, batch_size: int = 256) -> Prediction:
        """Labels and mixed probabilities for images: a uint8/[0,1] tensor [N, 3, H, W] or [3, H, W]
        at the input size, or file paths, PIL images or numpy arrays ([H, W, 3] uint8 or [0, 1]
        floats, one or a list, or [N, H, W, 3]; resized and centre-cropped to the input size)."""
        import numpy as np

        from .data.images import array_to_uint8_tensor, decode_image, eval_view, to_uint8_tensor

        if isinstance(images, np.ndarray) and images.ndim < 4:
            images = [images]  # one HWC (or grey, or CHW) array; [N, H, W, 3] is a batch
        if not isinstance(images, Tensor):
            items = [images] if isinstance(images, (str, Path)) or hasattr(images, "convert") else list(images)
            views = [decode_image(x) if isinstance(x, (str, Path)) else array_to_uint8_tensor(x) if isinstance(x, np.ndarray)
                     else to_uint8_tensor(x) for x in items]
            images = torch.stack([eval_view(v, self.preprocess.size) for v in views])
        elif images.dim() == 3:
            images = images.unsqueeze(0)
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        probs = []
        for start in range(0, len(images), batch_size):
            out = self(images[start:start + batch_size].to(device))
            probs.append(mix_probs(out.ce_logits, out.kd_logits, alpha, beta).cpu())
        self.train(was_training)
        probs_all = torch.cat(probs)
        idx = probs_all.topk(topk, dim=-1).indices if topk else probs_all.argmax(-1)
        names = [[self.classnames[j] for j in row] for row in idx.tolist()] if topk else [self.classnames[j] for j in idx.tolist()]
        return Prediction(idx, probs_all, names)


@dataclass(frozen=True)
class StudentSpec:
    """The architecture of a student, as its checkpoint records it (``model.json``'s
    ``architecture``): enough to rebuild it offline with random weights."""

    backbone: str
    source: str
    num_features: int
    num_classes: int
    ce_head: str  # a head kind, or "text" (a frozen cosine classifier over class embeddings)
    kd_head: str | None  # None: a single-head student
    projector_dim: int | None
    zeta: float
    cosine_normalize_weight: bool
    cosine_bias: str
    mlp_dropout: float
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    timm_kwargs: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentSpec:
        """A checkpoint's record; one written before ``cosine_bias`` existed added the bias unscaled."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("cosine_bias", "unscaled")
        values.setdefault("projector_dim", None)
        extra = set(values.get("timm_kwargs") or {}) - ARCHITECTURE_KWARGS
        if extra:  # e.g. checkpoint_path or pretrained_cfg_overlay would make timm open a file it names
            raise ValueError(f"architecture.timm_kwargs {sorted(extra)}: not architecture settings (allowed: "
                             f"{', '.join(sorted(ARCHITECTURE_KWARGS))})")
        try:
            return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a student architecture record ({type(err).__name__}: {err})") from None


# what a checkpoint's architecture.timm_kwargs may hold: shape settings that read no file
ARCHITECTURE_KWARGS = frozenset({"bn_eps", "pad_type", "keep_dropout", "image_size", "quick_gelu", "drop_rate",
                                 "drop_path_rate", "global_pool", "in_chans"})


def build_student(cfg: StudentConfig, classnames: Sequence[str], *, dual_head: bool = True,
                  class_embeddings: Tensor | None = None, projector_dim: int | None = None,
                  text_head: bool = False) -> DualHeadStudent:
    """The configured backbone (with its pretrained weights) and fresh heads for ``classnames``.

    ``projector_dim``: add a linear projector to a teacher feature space of that size (feature KD);
    ``text_head``: h_CE is the frozen cosine classifier over ``class_embeddings`` [C, projector_dim]
    applied to the projector's output (a student trained by feature KD alone predicts so)."""
    if text_head and (not projector_dim or class_embeddings is None or class_embeddings.shape[-1] != projector_dim):
        raise ValueError("a text head needs a projector and class embeddings of the projector's size")
    backbone, num_features, norm = create_backbone(cfg.backbone, cfg.source, cfg.pretrained, cfg.weights,
                                                   image_size=cfg.image_size, quick_gelu=cfg.quick_gelu,
                                                   torchvision_weights=cfg.torchvision_weights,
                                                   keep_dropout=cfg.keep_dropout)
    spec = StudentSpec(
        backbone=cfg.backbone, source=resolve_source(cfg.backbone, cfg.source), num_features=num_features,
        num_classes=len(classnames), ce_head="text" if text_head else cfg.ce_head,
        kd_head=cfg.kd_head if dual_head else None, projector_dim=projector_dim or None, zeta=cfg.zeta,
        cosine_normalize_weight=cfg.cosine_normalize_weight, cosine_bias=cfg.cosine_bias, mlp_dropout=cfg.mlp_dropout,
        image_size=cfg.image_size, mean=tuple(norm["mean"]), std=tuple(norm["std"]), timm_kwargs=norm["timm_kwargs"])
    student = assemble_student(backbone, spec, classnames, class_embeddings if text_head else None)
    if cfg.language_init and not text_head:
        if class_embeddings is None:
            log.warning("student.language_init is set but the teacher gave no class embeddings")
        else:
            heads = (student.ce_head, student.kd_head)
            done = [init_head_from_embeddings(h, class_embeddings) for h in heads if h is not None]
            if not all(done):
                log.warning("language-aware init skipped: teacher embeddings %s vs student features %d",
                            tuple(class_embeddings.shape), num_features)
    return student


def assemble_student(backbone: nn.Module, spec: StudentSpec, classnames: Sequence[str],
                     text_embeddings: Tensor | None = None) -> DualHeadStudent:
    """The one place a student is put together: ``backbone`` and the heads ``spec`` describes
    (fresh weights; a text head over ``text_embeddings``, or zeros a checkpoint will fill)."""
    if spec.num_classes != len(classnames):
        raise ValueError(f"{len(classnames)} class names for a student of {spec.num_classes} classes")

    def head(kind: str) -> nn.Module:
        return build_head(kind, spec.num_features, spec.num_classes, zeta=spec.zeta,
                          normalize_weight=spec.cosine_normalize_weight, dropout=spec.mlp_dropout,
                          scale_bias=spec.cosine_bias == "scaled")

    projector = nn.Linear(spec.num_features, spec.projector_dim) if spec.projector_dim else None
    if spec.ce_head == "text":
        if spec.projector_dim is None:
            raise ValueError("a text head reads a projector's output: the spec needs projector_dim")
        embeddings = text_embeddings if text_embeddings is not None else torch.zeros(spec.num_classes, spec.projector_dim)
        ce_head: nn.Module = TextHead(embeddings, spec.zeta)
    else:
        ce_head = head(spec.ce_head)
    kd_head = head(spec.kd_head) if spec.kd_head else None
    preprocess = Preprocess(spec.mean, spec.std, spec.image_size)
    return DualHeadStudent(backbone, preprocess, ce_head, kd_head, spec, classnames, projector)


class _AboutToBeLoaded(logging.Filter):
    """open_clip warns that a model built without weights is random: not so for one rebuilt to
    receive a checkpoint's weights. open_clip (3.x) logs through the root logger (``logging.warning``),
    not a logger of its own, so the filter sits there while the model is built and drops that one
    open_clip record only."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = f"{os.sep}open_clip{os.sep}" in record.pathname and "initialized randomly" in record.getMessage()
        return not ours


def student_from_spec(spec: StudentSpec | dict, classnames: Sequence[str]) -> DualHeadStudent:
    """Rebuild the architecture recorded in a checkpoint (random weights, nothing downloaded)."""
    spec = spec if isinstance(spec, StudentSpec) else StudentSpec.from_dict(spec)
    logger, quiet = logging.getLogger(), _AboutToBeLoaded()
    logger.addFilter(quiet)
    try:
        backbone, num_features, _ = create_backbone(spec.backbone, spec.source, pretrained=False, timm_kwargs=spec.timm_kwargs)
    finally:
        logger.removeFilter(quiet)
    if num_features != spec.num_features:
        raise ValueError(f"backbone {spec.backbone} has {num_features} features, checkpoint says {spec.num_features}")
    return assemble_student(backbone, spec, classnames)
