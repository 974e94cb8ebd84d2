"""Metrics: accuracy of each head, of the mix, of the teacher; head agreement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .chunking import cpu_chunk_rows
from .mixing import mix_probs
from .students import DualHeadStudent
from .teachers import Teacher

__all__ = ["SplitLogits", "collect_logits", "head_agreement", "own_size_logits", "score"]


@dataclass
class SplitLogits:
    """Everything evaluation needs from one pass over a split (all on the CPU)."""

    labels: Tensor  # [N]
    ce: Tensor | None = None  # [N, C]
    kd: Tensor | None = None  # [N, C]
    teacher: Tensor | None = None  # [N, C]


@torch.no_grad()
def collect_logits(views: Dataset, student: DualHeadStudent | None = None, teacher: Teacher | None = None, *,
                   batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = False,
                   desc: str = "eval", num_workers: int = 0) -> SplitLogits:
    """Run the student and/or teacher over eval views [(uint8 image, label)]."""
    was_training = student.training if student is not None else False
    if student is not None:
        student.eval()
    labels, ce, kd, tl = [], [], [], []
    loader = DataLoader(views, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for images, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        labels.append(y)
        if student is not None:
            for chunk in images.split(cpu_chunk_rows(images.device, student.preprocess.size) or len(images)):
                out = student(chunk)
                ce.append(out.ce_logits.float().cpu())
                kd.append(out.kd_logits.float().cpu())
        if teacher is not None:
            tl.append(teacher(images).logits.float().cpu())
    if student is not None:
        student.train(was_training)
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return SplitLogits(torch.cat(labels) if labels else torch.empty(0, dtype=torch.long), cat(ce), cat(kd), cat(tl))


def own_size_logits(store, student: DualHeadStudent, teacher: Teacher | None = None, collect=collect_logits,
                    **kw) -> SplitLogits:
    """Logits of every image of ``store`` (an ImageStore), each model on centre crops at its own
    input size, as each is used on its own: the student's are those its exported graph gives.
    ``collect`` runs one model over views (``collect_logits``, or a distributed version of it)."""
    from .data import EvalViews

    logits = collect(EvalViews(store, student.preprocess.size), student, None, **kw)
    if teacher is not None:
        logits.teacher = collect(EvalViews(store, teacher.image_size), None, teacher, **kw).teacher
    return logits


def _accuracy(logits_or_probs: Tensor, labels: Tensor) -> float:
    return float((logits_or_probs.argmax(-1) == labels).double().mean()) if len(labels) else float("nan")


def head_agreement(ce: Tensor, kd: Tensor, labels: Tensor) -> dict[str, int]:
    """Counts of (both right, only CE right, only KD right, both wrong)."""
    ce_ok, kd_ok = ce.argmax(-1) == labels, kd.argmax(-1) == labels
    return {
        "both_right": int((ce_ok & kd_ok).sum()), "only_ce": int((ce_ok & ~kd_ok).sum()),
        "only_kd": int((~ce_ok & kd_ok).sum()), "both_wrong": int((~ce_ok & ~kd_ok).sum()),
    }


def score(logits: SplitLogits, alpha: float | None = None, beta: float | None = None) -> dict:
    """Accuracies as fractions in [0, 1]: ``ce_head``, ``kd_head``, ``mixed`` (with alpha/beta),
    ``teacher``; plus head agreement counts when both heads are present."""
    out: dict = {"n": len(logits.labels)}
    if logits.ce is not None:
        out["ce_head"] = _accuracy(logits.ce, logits.labels)
        out["kd_head"] = _accuracy(logits.kd, logits.labels)
        if alpha is not None and beta is not None:
            out["mixed"] = _accuracy(mix_probs(logits.ce, logits.kd, alpha, beta), logits.labels)
        out["agreement"] = head_agreement(logits.ce, logits.kd, logits.labels)
    if logits.teacher is not None:
        out["teacher"] = _accuracy(logits.teacher, logits.labels)
    return out


def _wnids(meta: dict) -> list[str] | None:
    """The WordNet id of each class of an ImageNet student (its folder name on disk): recorded at
    training, else the standard ImageNet-1k order for a 1000-class student; None otherwise."""
    from .data.variants import imagenet_wnids

    recorded = (meta.get("split") or {}).get("wnids")
    if recorded and len(recorded) == len(meta["classes"]):
        return list(recorded)
    return imagenet_wnids() if len(meta["classes"]) == 1000 else None


def checkpoint_split(checkpoint: str | Path, meta: dict, split: str, data: str | Path | None,
                     variant: str | None = None):
    """The manifest and items to evaluate: a folder given by the user (an ImageNet ``variant``
    such as imagenet-r when named), or a split of the run."""
    from .data.splits import SplitManifest, folder_manifest

    if variant is not None:
        from .data.variants import variant_manifest

        if data is None:
            raise ValueError(f"name the {variant} folder with --data DIR")
        manifest = variant_manifest(variant, data, meta["classes"], _wnids(meta))
        return manifest, manifest.test
    if data is not None:
        from .data.folders import list_classes

        root = Path(data)
        root = root / split if (root / split).is_dir() else root
        wnids, folders = _wnids(meta), set(list_classes(root))
        by_wnid = wnids is not None and not folders <= set(meta["classes"])
        splits = sorted(folders & {"train", "val", "test", "images"})
        if splits and not folders <= set(meta["classes"]) | set(wnids or ()):
            raise ValueError(f"{root} holds {', '.join(f'{s}/' for s in splits)} rather than class folders: "
                             f"name one of them, e.g. --data {root / splits[-1]}")
        manifest = folder_manifest(root, meta["classes"], wnids if by_wnid else None)
        return manifest, manifest.test
    ckpt = Path(checkpoint)
    run_dir = (ckpt if ckpt.is_dir() else ckpt.parent).parent
    if not (run_dir / "splits.json").is_file():
        raise FileNotFoundError(f"no splits.json beside the checkpoint in {run_dir}; pass --data DIR")
    manifest = SplitManifest.load(run_dir / "splits.json")
    if manifest.classes != meta["classes"]:
        raise ValueError(f"class list of {run_dir / 'splits.json'} differs from the checkpoint's")
    items = manifest.split(split)
    if not items:
        raise ValueError(f"split {split!r} of this run is empty")
    return manifest, items


def checkpoint_logits(checkpoint: str | Path, split: str = "test", data: str | Path | None = None, *,
                      with_teacher: bool = False, device: str = "cpu", batch_size: int = 256,
                      progress: bool = False, variant: str | None = None) -> tuple[SplitLogits, dict, DualHeadStudent]:
    """Logits of a saved student (and optionally its teacher) on a split of its run or a folder.
    On a class-subset test set (ImageNet-R / -A) the other classes' logits are -inf."""
    from .checkpoint import load_metadata, load_student
    from .config import RunConfig
    from .data import ImageStore
    from .data.variants import mask_logits
    from .teachers import build_teacher

    meta = load_metadata(checkpoint)
    student = load_student(checkpoint, device=device)
    manifest, items = checkpoint_split(checkpoint, meta, split, data, variant)
    teacher = None
    if with_teacher:
        run_cfg = RunConfig.from_dict(meta["config"])
        teacher = build_teacher(run_cfg.teacher, meta["classes"], run_cfg.data.dataset).to(device)
        if "templates" in meta and list(teacher.templates) != list(meta["templates"]):
            raise ValueError(f"the rebuilt teacher's prompt templates differ from those {checkpoint} was trained with")
    logits = own_size_logits(ImageStore(manifest, items, in_memory=False), student, teacher, batch_size=batch_size,
                             device=device, progress=progress, desc=split)
    subset = manifest.info.get("class_subset")
    logits = SplitLogits(logits.labels, *(mask_logits(t, subset) for t in (logits.ce, logits.kd, logits.teacher)))
    return logits, meta, student


def zeroshot_accuracy(cfg, split: str = "test", *, progress: bool = False) -> dict:
    """The teacher's zero-shot accuracy on one split of ``cfg.data`` (a RunConfig)."""
    from .data import EvalViews, ImageStore
    from .data.splits import splits_for
    from .teachers import build_teacher
    from .train import resolve_device

    d = cfg.data
    manifest = splits_for(d)
    device = resolve_device(cfg.device)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset).to(device)
    views = EvalViews(ImageStore(manifest, manifest.split(split), in_memory=False), teacher.image_size)
    logits = collect_logits(views, None, teacher, batch_size=cfg.eval.batch_size, device=device, progress=progress, desc=split)
    return {"teacher_id": teacher.id, "split": split, "templates": list(teacher.templates), **score(logits)}
