"""The teacher protocol: frozen, owns its preprocessing, gives normalised features and logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..device import autocast, cpu_chunk_rows
from ..preprocess import Preprocess

__all__ = ["CLASS_AVERAGES", "Teacher", "TeacherOutput", "fold_batchnorm", "prompt_name"]

CLASS_AVERAGES = ("renormalized", "mean", "raw_mean")  # how a class's prompt embeddings become w_c


@dataclass
class TeacherOutput:
    features: Tensor  # [B, D], L2-normalised image features
    logits: Tensor  # [B, C], teacher logits for the task's classes


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d registered just before it, in place.

    For frozen convolutional teachers (registration order = execution order, as in timm's
    EfficientNet blocks), by torch's ``fuse_conv_bn_eval``: W' = W * g / sqrt(v + eps),
    b' = beta + (b - m) * g / sqrt(v + eps). A timm BatchNormAct2d keeps its activation. Returns the
    number of folded pairs.
    """
    folded = 0
    children = list(module.named_children())
    for (conv_name, conv), (bn_name, bn) in pairwise(children):
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training and not conv.training
                and bn.track_running_stats):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Sequential(getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())))
            folded += 1
    return folded + sum(fold_batchnorm(child) for _, child in module.named_children())


def prompt_name(classname: str) -> str:
    """Folder names like 'sea_lion' read as 'sea lion' inside prompts."""
    return classname.replace("_", " ")


class Teacher(nn.Module):
    """Base class of every teacher. Frozen by construction and never saved with a student.

    Subclasses implement :meth:`encode_image` (normalised pixels -> raw features) and either
    :meth:`encode_text` or :meth:`embed_prompts`; the zero-shot head is built here, exactly as
    METHOD.md section 2: per class, embed every filled template, L2-normalise each, average,
    L2-normalise again; logits = cos(f(x), w_c) / zeta.
    """

    id: str = "teacher"
    cpu_chunks: bool = True  # on the CPU, run rows in cache-sized chunks (see dho.device)
    # Autocast dtype of every image forward (None: fp32). Set once by the run that uses the teacher,
    # so online outputs, cache misses, few-shot fitting and stores are computed the same way.
    autocast_dtype: torch.dtype | None = None

    def __init__(self, preprocess: Preprocess, zeta: float = 0.01) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.zeta = float(zeta)
        self.classnames: list[str] = []
        self.templates: tuple[str, ...] = ()
        self.register_buffer("class_embeddings", torch.empty(0), persistent=False)

    # -- subclass API ------------------------------------------------------------------------
    def encode_image(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> image features [B, D] (not yet L2-normalised)."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> Tensor:
        """Prompts -> text features [T, D] (not yet L2-normalised)."""
        raise NotImplementedError

    def embed_prompts(self, classname: str, templates: Sequence[str]) -> Tensor:
        """One class's prompt embeddings [T, D]."""
        return self.encode_text([t.format(prompt_name(classname)) for t in templates])

    # -- shared behaviour --------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.preprocess.size

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @torch.no_grad()
    def set_classes(self, classnames: Sequence[str], templates: Sequence[str], average: str = "renormalized") -> None:
        """Build the zero-shot head w [C, D] for the task's classes: per class, the mean over its
        prompts' embeddings, each L2-normalised, normalised again (``"renormalized"``, METHOD.md 2);
        not normalised again (``"mean"``, the DHO authors' DFN teacher); or the plain mean of the raw
        embeddings (``"raw_mean"``, their language-aware head init)."""
        if average not in CLASS_AVERAGES:
            raise ValueError(f"class embedding average {average!r} is not one of {', '.join(CLASS_AVERAGES)}")
        rows = []
        for name in classnames:
            emb = self.embed_prompts(name, templates).float()
            mean = (emb if average == "raw_mean" else F.normalize(emb, dim=-1)).mean(dim=0)
            rows.append(F.normalize(mean, dim=-1) if average == "renormalized" else mean)
        self.classnames = list(classnames)
        self.templates = tuple(templates)
        self.class_embeddings = torch.stack(rows)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """uint8/[0,1] images [B, 3, H, W] -> L2-normalised features [B, D]."""
        return F.normalize(self.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        """Normalised features [B, D] -> logits [B, C]."""
        if self.class_embeddings.numel() == 0:
            raise RuntimeError("teacher has no classes: call set_classes() first")
        return features @ self.class_embeddings.t() / self.zeta

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutput:
        """uint8/[0,1] images [B, 3, H, W] -> normalised features [B, D] and logits [B, C].

        On the CPU the rows go through in chunks (:func:`dho.device.cpu_chunk_rows`), about 1.8x
        faster for a 160 px EfficientNet than one batch of 128; rows agree with a whole-batch
        forward up to float rounding.
        """
        rows = cpu_chunk_rows(images.device, self.image_size) if self.cpu_chunks else 0
        with autocast(images.device, self.autocast_dtype):
            if not rows or len(images) <= rows:
                out = self.forward_rows(images)
            else:
                outs = [self.forward_rows(chunk) for chunk in images.split(rows)]
                out = TeacherOutput(torch.cat([o.features for o in outs]), torch.cat([o.logits for o in outs]))
        return TeacherOutput(features=out.features.float(), logits=out.logits.float())

    def forward_rows(self, images: Tensor) -> TeacherOutput:
        """One chunk of :meth:`forward`; subclasses with their own logits override this."""
        feats = self.features(images)
        return TeacherOutput(features=feats, logits=self.logits_from_features(feats))

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def describe(self) -> dict:
        return {"id": self.id, "zeta": self.zeta, "templates": list(self.templates), **self.preprocess.describe()}
