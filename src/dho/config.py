"""Typed run configuration: frozen dataclasses, YAML round trip, dotted ``key=value`` overrides.

The dataclasses are the single source of truth. A YAML file is a serialised :class:`RunConfig`;
unknown keys are errors with a "did you mean" hint, and every run writes its resolved config.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .coerce import (
    ConfigError,
    build,
    check_choice,
    check_literals,
    check_positive,
    check_range,
    read_yaml,
    set_dotted,
    split_override,
    to_plain,
)
from .files import write_text_atomic
from .methods import METHOD_SPECS

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "LossConfig", "OptimConfig", "RunConfig", "StudentConfig",
           "TeacherConfig", "load_config", "save_config"]


DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


# the benchmark datasets by name (dho.data.benchmarks.DATASETS); each names its prompt template set
DATASET_NAMES = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher. ``pretrained`` is an open_clip tag or a local checkpoint file.

    ``imagenet-bridge`` is the offline stand-in for a CLIP teacher: an ImageNet classifier whose
    probabilities reach the task's classes through a text embedder (``bridge_tau`` its temperature).
    """

    # the teacher: an open_clip CLIP model, the offline ImageNet-classifier stand-in, or a synthetic one (tests);
    # auto = open_clip when its weights are given or on this machine, else imagenet-bridge (with a note)
    kind: Literal["auto", "openclip", "imagenet-bridge", "synthetic"] = "auto"
    model: str = "RN50"  # openclip: the model name (RN50, ViT-B-16, ...)
    pretrained: str | None = None  # openclip: an open_clip tag (openai, laion2b_s34b_b79k, ...) or a local checkpoint file
    templates: str = "auto"  # "auto": the set named after data.dataset, else "default"
    zeta: float = 0.01  # the teacher's cosine-logit temperature: logits = cos(image, class) / zeta
    image_size: int | None = None  # None: the model's own input size (imagenet-bridge: 160)
    quick_gelu: bool | None = None  # openclip: None = QuickGELU when the weights want it (OpenAI's)
    # w_c from a class's prompt embeddings (each normalised, averaged): normalised again (the paper),
    # or "mean" without (the authors' DFN teacher)
    class_embedding: Literal["renormalized", "mean"] = "renormalized"
    # imagenet-bridge (its three choices measured on CIFAR-10's and Caltech101's validation images,
    # docs/benchmarks.md; its input size is 160 px unless image_size says otherwise): the text bridge's temperature
    bridge_tau: float = 0.05
    # imagenet-bridge: its ImageNet classifier
    bridge_backbone: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = "efficientnet_lite2"
    # imagenet-bridge: WordNet's noun hierarchy off, with each class name's first noun sense, or every sense
    bridge_wordnet: Literal["off", "first", "all"] = "all"
    embed_dim: int = 64  # synthetic teacher only
    seed: int = 0  # synthetic teacher only
    # few-shot teacher: Tip-Adapter(-F) on the labeled shots; auto = tip-f (DHO-F) when the run has K shots
    # per class and learns from the teacher, none (the zero-shot teacher) otherwise (RunConfig.adapter)
    adapter: Literal["auto", "none", "tip", "tip-f"] = "auto"
    adapter_views: int = 10  # augmented views of each shot for the cache keys (and Tip-Adapter-F's training)
    adapter_epochs: int = 20  # Tip-Adapter-F key fine-tuning
    # cache keys: each view's feature normalised, averaged, normalised again; raw_mean = Tip-Adapter's
    # raw features averaged (the same accuracy measured, but it cannot replay cached outputs)
    adapter_keys: Literal["raw_mean", "normalized_mean"] = "normalized_mean"
    adapter_train_views: Literal["fresh", "fixed"] = "fresh"  # Tip-Adapter-F: a new view per epoch, or the key views
    adapter_grid: Literal["dho", "tip"] = "dho"  # (a, b): scaled to the zero-shot logits, or Tip-Adapter's per dataset
    adapter_file: str | None = None  # the DHO authors' Tip-Adapter-F teacher file (a torch dict), read, not fitted
    cache: str | None = None  # a directory written by `dho cache-teacher`: outputs replayed, misses computed

    def __post_init__(self) -> None:
        check_literals(self, "teacher.")
        if self.adapter_file and self.adapter not in ("tip-f", "auto"):
            raise ConfigError(f"teacher.adapter_file holds a Tip-Adapter-F teacher: it needs teacher.adapter=tip-f, "
                              f"not {self.adapter}")
        check_positive("teacher.adapter_views", self.adapter_views)
        check_positive("teacher.adapter_epochs", self.adapter_epochs)
        check_positive("teacher.zeta", self.zeta)
        check_positive("teacher.image_size", self.image_size)
        check_positive("teacher.bridge_tau", self.bridge_tau)
        check_positive("teacher.embed_dim", self.embed_dim)


@dataclass(frozen=True)
class StudentConfig:
    """The student backbone (a timm, torchvision or open_clip name) and its two heads. An open_clip
    student is the model's image tower; ``pretrained`` loads OpenAI's weights, ``weights`` a tag or file."""

    # a timm, torchvision or open_clip model name (efficientnet_lite0, resnet18, ViT-B-16, ...); the default's
    # ImageNet weights install with dho (offline)
    backbone: str = "efficientnet_lite0"
    source: Literal["auto", "timm", "torchvision", "open_clip"] = "auto"  # open_clip: a CLIP image tower
    pretrained: bool = True  # start from the backbone's ImageNet (or CLIP) weights; false = random initialisation
    weights: str | None = None  # local weights file for the backbone (safetensors or .pt)
    torchvision_weights: str = "IMAGENET1K_V1"  # with pretrained: the authors' (pretrained=True); DEFAULT = newest
    keep_dropout: bool = False  # torchvision: keep the Dropout before the classifier (MobileNetV2's 0.2)
    image_size: int = 128  # input size in pixels (square); the paper's students run at 224
    quick_gelu: bool | None = None  # CLIP towers: None = QuickGELU when the weights want it (OpenAI's)
    ce_head: Literal["linear", "cosine", "mlp"] = "linear"  # the head trained on the labels
    kd_head: Literal["linear", "cosine", "mlp"] = "linear"  # the head trained on the teacher
    zeta: float = 0.01  # cosine head scale is 1 / zeta
    cosine_normalize_weight: bool = False  # False = the authors' code (features normalised only)
    cosine_bias: Literal["scaled", "unscaled"] = "scaled"  # scaled: (W z/|z| + b) / zeta, the authors' code
    language_init: bool = False  # W_CE = W_KD = teacher class embeddings when dims agree
    # a CLIP student's own text embeddings for language_init: the plain mean of the raw prompt
    # embeddings (the authors' code) or the normalised zero-shot head ("renormalized")
    language_init_embedding: Literal["raw_mean", "renormalized"] = "raw_mean"
    mlp_dropout: float = 0.0  # dropout inside mlp heads
    freeze_backbone: bool = False  # heads-only training: backbone features computed once per view
    feature_cache: str | None = None  # heads-only: a folder keeping those features for later runs (any method, K, budget)
    # a step's labeled and unlabeled batches: two forward passes, each with its own BatchNorm batch
    # statistics ("separate", the authors' small-dataset code), or one of both ("joint", their ImageNet code)
    stream_forward: Literal["separate", "joint"] = "separate"

    def __post_init__(self) -> None:
        check_literals(self, "student.")
        check_positive("student.image_size", self.image_size)
        check_positive("student.zeta", self.zeta)
        check_range("student.mlp_dropout", self.mlp_dropout, 0, 1)


@dataclass(frozen=True)
class DataConfig:
    """Where the images are (an ImageFolder tree, or a benchmark in CoOp's layout) and how to split
    them into labeled, unlabeled, validation and test."""

    root: str = ""  # the dataset: an ImageFolder tree, or a benchmark's root
    format: Literal["folder", "coop", "fgvc", "imagenet"] = "folder"  # coop: split_zhou_<Name>.json; fgvc: txt lists
    dataset: str | None = None  # a benchmark name (e.g. dtd); picks the split file and the prompt templates
    split_file: str | None = None  # coop: the split JSON; imagenet: classnames.txt (default: found under root)
    val_shots: Literal["full", "coop"] = "full"  # benchmarks: the whole val split, or min(shots, 4) per class (CoOp)
    shot_draw: Literal["dho", "coop"] = "dho"  # benchmarks: K shots per class independently, or CoOp's sequential draw
    fewshot_file: str | None = None  # benchmarks: CoOp's split_fewshot/shot_<K>-seed_<S>.pkl, its exact draw
    low_shot: Literal["per_class", "authors", "file"] = "per_class"  # with fraction: how the labeled subset is drawn
    # low_shot=file: image file names, one a line; None = SimCLR's <root>/subsets/<100 * fraction>percent.txt
    subset_file: str | None = None
    manifest_dir: str | None = None  # benchmarks: drawn splits are cached here as JSON manifests
    shots: int | Literal["all"] | None = 16  # labeled images per class; all = every labeled image; None -> use `fraction`
    fraction: float | None = None  # labeled fraction per class (low-shot), used when shots is None
    split_seed: int = 1  # seed of the labeled / unlabeled / validation draw
    val_fraction: float = 0.1  # carved per class from train/ when there is no val/ folder
    # carved per class for a test split when a folder tree has no test/; 0 = no test split (validation only)
    test_fraction: float = 0.0
    # the unlabeled stream beside data.root's labeled images: a folder (searched recursively; its
    # sub-folder names are not labels), a text file of image paths (relative to the file), or a glob
    unlabeled: str | None = None
    max_unlabeled: int | None = None  # a class-balanced random subset of the unlabeled pool
    in_memory: bool = True  # decode every image once and keep the uint8 tensors
    # training images are kept (in memory, and cropped) with their shorter side at most this many pixels:
    # auto = twice the training view size; null = full size (the authors' code crops full-size images)
    store_side: int | Literal["auto"] | None = "auto"
    # with in_memory: the share of this machine's memory the kept images may take (estimated from a
    # sample of image headers); beyond it they are decoded from disk at every use, in DataLoader workers
    memory_budget: float = 0.5
    view_size: int | None = None  # training crops are made at this size; None = the larger model size
    num_views: int | None = None  # distinct augmented views per image (pass p replays view p % n); None = new each pass
    num_workers: int = 0  # DataLoader worker processes decoding images (0 = in the training process)
    device_crops: bool | None = None  # crop in-memory images on the training device; None = on a GPU
    skip_bad: bool = False  # audit every image first (`dho data check`) and train without the bad ones
    small_classes: Literal["error", "drop", "take_all"] = "error"  # a class with fewer training images than shots
    duplicates: Literal["warn", "error", "off"] = "warn"  # the same file content in two splits

    def __post_init__(self) -> None:
        check_literals(self, "data.")
        if self.dataset is not None:
            check_choice("data.dataset", self.dataset, DATASET_NAMES)
        elif self.format in ("fgvc", "imagenet"):  # these formats hold one dataset each
            object.__setattr__(self, "dataset", "fgvc_aircraft" if self.format == "fgvc" else "imagenet")
        self._check_benchmark()
        check_positive("data.num_workers", self.num_workers, allow_zero=True)
        check_positive("data.max_unlabeled", self.max_unlabeled, allow_zero=True)
        if self.shots is None and self.fraction is None:
            raise ConfigError("data.shots and data.fraction are both null: set one of them")
        if self.shots is not None and self.shots != "all":
            check_positive("data.shots", self.shots)
        if self.shots == "all" and (self.format != "folder" or self.fraction is not None):
            raise ConfigError("data.shots=all labels every image of a folder tree (data.format=folder, no data.fraction)")
        if self.unlabeled is not None and self.format != "folder":
            raise ConfigError("data.unlabeled adds a folder of unlabeled images to a folder tree (data.format=folder); "
                              "a benchmark's unlabeled images are its training split")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"data.fraction={self.fraction!r} must be in (0, 1]")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be in [0, 1)")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction={self.test_fraction!r} must be in [0, 1)")
        if self.view_size is not None:
            check_positive("data.view_size", self.view_size)
        if isinstance(self.store_side, int):
            check_positive("data.store_side", self.store_side)
        check_range("data.memory_budget", self.memory_budget, 0, 1)
        if self.num_views is not None:
            check_positive("data.num_views", self.num_views)


    def _check_benchmark(self) -> None:
        if self.format == "coop" and self.dataset is None:
            raise ConfigError("data.format=coop needs data.dataset (e.g. dtd)")
        if self.format == "coop" and self.dataset in ("imagenet", "fgvc_aircraft"):
            use = "imagenet" if self.dataset == "imagenet" else "fgvc (its official txt lists)"
            raise ConfigError(f"data.dataset={self.dataset} has no CoOp split file: use data.format={use}")
        if self.format == "fgvc" and self.dataset not in (None, "fgvc_aircraft"):
            raise ConfigError(f"data.format=fgvc reads FGVC-Aircraft; data.dataset={self.dataset!r} does not match")
        if self.format == "imagenet" and self.dataset not in (None, "imagenet"):
            raise ConfigError(f"data.format=imagenet reads ImageNet; data.dataset={self.dataset!r} does not match")
        if self.format != "folder" and self.small_classes == "drop" and (self.shot_draw == "coop" or self.fewshot_file):
            raise ConfigError("data.small_classes=drop cannot change CoOp's draw (data.shot_draw=coop, "
                              "data.fewshot_file): use take_all or error")
        if self.fewshot_file and (self.format == "folder" or self.shots is None):
            raise ConfigError("data.fewshot_file names CoOp's K-shot draw of a benchmark: it needs a benchmark "
                              "data.format and data.shots")
        if self.shot_draw == "coop" and (self.format == "folder" or self.shots is None):
            raise ConfigError("data.shot_draw=coop draws K shots from a benchmark's split list: it needs a benchmark "
                              "data.format and data.shots")
        if self.low_shot != "per_class" and self.format == "folder":
            raise ConfigError(f"data.low_shot={self.low_shot} needs a benchmark data.format (e.g. imagenet)")


@dataclass(frozen=True)
class LossConfig:
    """Which method trains the student and the weights of its loss terms (METHOD.md 4)."""

    # the names of dho.methods.METHOD_SPECS, in its order
    method: Literal["ce", "kd_logit", "kd_feature", "ce_kd_logit", "ce_kd_feature", "sskd", "dhkd", "pcgrad", "dho"] = "dho"
    ce_weight: float = 0.5  # weight of the cross-entropy term on labeled images
    kd_weight: float = 0.5  # weight of the distillation term
    temperature: float = 2.0  # distillation temperature (teacher and student logits divided by it)
    kd_reduction: Literal["sum", "mean"] = "sum"  # "sum" = the authors' code
    feature_weight: float | None = None  # feature-KD MSE weight; None = ln(C) / 2, the CE scale at chance
    # method=dhkd: "authors" = DHKD's code, CE on h_CE + BinaryKL-Norm on the auxiliary head (no KD on h_CE);
    # "main_head_kd" = dho's earlier variant, CE + softmax KD on h_CE + sigmoid binary KD on the auxiliary head
    dhkd: Literal["authors", "main_head_kd"] = "authors"

    def __post_init__(self) -> None:
        check_literals(self, "loss.")
        check_positive("loss.temperature", self.temperature)
        check_positive("loss.ce_weight", self.ce_weight, allow_zero=True)
        check_positive("loss.kd_weight", self.kd_weight, allow_zero=True)
        check_positive("loss.feature_weight", self.feature_weight, allow_zero=True)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, the schedule, and how long an epoch is."""

    epochs: int = 200  # passes over the labeled set (or the unlabeled set, epoch_mode)
    batch_size: int = 64  # per stream: a step sees batch_size labeled + batch_size unlabeled
    # what one epoch is: a pass over the labeled set (the small datasets) or the unlabeled set (ImageNet)
    epoch_mode: Literal["labeled", "unlabeled"] = "labeled"
    # steps per epoch = ceil(n / batch_size): the authors' loaders keep the last partial batch; floor drops it
    epoch_rounding: Literal["ceil", "floor"] = "ceil"
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-2  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    # learning-rate schedule over the run's steps
    schedule: Literal["cosine", "linear_warmup", "warmup_cosine", "constant"] = "linear_warmup"
    warmup_fraction: float = 0.1  # linear_warmup / warmup_cosine, unless warmup_steps is set
    warmup_steps: int | None = None  # warm-up steps (overrides warmup_fraction)
    # cap on total steps, the schedule fitted to it (a CPU-sized default); null = epochs alone decide (the paper presets)
    max_steps: int | None = 1000
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop scale range of the training views

    def __post_init__(self) -> None:
        check_literals(self, "optim.")
        check_positive("optim.epochs", self.epochs)
        check_positive("optim.batch_size", self.batch_size)
        check_positive("optim.lr", self.lr)
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("optim.max_steps", self.max_steps)
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, 0, 1)
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"optim.warmup_fraction={self.warmup_fraction!r} must be in [0, 1)")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"optim.crop_scale={list(self.crop_scale)} must satisfy 0 < lo <= hi <= 1")


@dataclass(frozen=True)
class EvalConfig:
    """Inference-time mixing. Grid search on validation only; fallbacks when there is none."""

    batch_size: int = 256  # images per evaluation batch
    eval_every: int = 0  # epochs between validation passes during training; 0 = only at the end
    keep: Literal["last", "best"] = "last"  # "best" keeps the epoch with the best validation mix
    teacher: bool = True  # also score the teacher on validation and test
    # alpha/beta without validation data; alpha None = the paper's: 0.4 with a zero-shot teacher,
    # 0.2 with a few-shot one (teacher.adapter), 0.5 in the low-shot setting (data.fraction)
    alpha: float | None = None
    beta: float = 0.5  # the KD head's temperature in the mix without validation data
    conflict_every: int = 0  # steps between gradient-conflict measurements (metrics.jsonl); 0 = off
    # "per_sample": the paper's Fig. 4, the mean over labeled images of each image's CE-vs-KD gradient cosine;
    # "batch": one cosine between the whole batch's gradients, unlabeled rows included
    conflict: Literal["per_sample", "batch"] = "per_sample"
    conflict_samples: int | None = 8  # per_sample: labeled images whose parameter gradients are taken; None = all

    def __post_init__(self) -> None:
        check_literals(self, "eval.")
        check_positive("eval.conflict_every", self.conflict_every, allow_zero=True)
        check_positive("eval.conflict_samples", self.conflict_samples)
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.eval_every", self.eval_every, allow_zero=True)
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ConfigError(f"eval.alpha={self.alpha!r} must be in [0, 1]")
        check_positive("eval.beta", self.beta)


@dataclass(frozen=True)
class RunConfig:
    """Everything one `dho train` run needs."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # seed of initialisation, augmentation and batch order
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda, cuda:N or mps
    threads: int | None = None  # torch threads; None = the free cores
    channels_last: bool = True  # NHWC memory layout for convolutional students
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs, fp32 on CPUs (measured)
    compile: bool = False  # torch.compile the student's backbone
    checkpoint_every: int = 500  # steps between resumable training states (state/last); 0 = only at the end
    out: str = "runs/dho"  # the run directory
    tensorboard: bool = False  # also write metrics.jsonl's numbers as TensorBoard events in RUN/tensorboard (extra: tensorboard)

    def __post_init__(self) -> None:
        check_literals(self, "")
        check_positive("threads", self.threads)
        check_positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")

    @property
    def adapter(self) -> Literal["none", "tip", "tip-f"]:
        """``teacher.adapter`` with ``auto`` resolved: Tip-Adapter-F (the paper's DHO-F teacher) when
        the run has K labeled shots per class (``data.shots``) and its method learns from the
        teacher, or when a Tip-Adapter-F file is named; the zero-shot teacher otherwise."""
        chosen = self.teacher.adapter
        if chosen != "auto":
            return chosen
        if self.teacher.adapter_file:
            return "tip-f"
        return "tip-f" if self.data.shots is not None and METHOD_SPECS[self.loss.method].teacher else "none"

    def store_side(self, view_size: int) -> int | None:
        """The longest shorter side a training image is kept at (``data.store_side``; auto = twice
        the training view size), or None for full size. Crops are drawn from the image as kept."""
        side = self.data.store_side
        return 2 * view_size if side == "auto" else side

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return build(cls, data, prefix="")

    def override(self, overrides: list[str] | dict[str, Any]) -> RunConfig:
        """Apply ``["optim.lr=3e-4", ...]`` (strings coerced to the field type) or a dict."""
        items = overrides.items() if isinstance(overrides, dict) else map(split_override, overrides)
        data = self.to_dict()
        for key, value in items:
            set_dotted(data, key, value)
        return RunConfig.from_dict(data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path) or {}
    cfg = RunConfig.from_dict(data)
    return cfg.override(overrides or [])


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
