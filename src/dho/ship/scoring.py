"""A saved student scored on a split of its run, a folder, or an ImageNet distribution-shift set (``dho eval``)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import CheckpointMeta
from ..config import RunConfig
from ..data.manifest import Item, SplitManifest
from ..evaluate import SplitLogits, own_size_logits
from ..students import DualHeadStudent
from ..teachers import Teacher

__all__ = ["checkpoint_logits", "checkpoint_split", "run_teacher"]


def _wnids(meta: CheckpointMeta) -> list[str] | None:
    """The WordNet id of each class of an ImageNet student (its folder name on disk): recorded at
    training, else the standard ImageNet-1k order for a 1000-class student; None otherwise."""
    from ..data.variants import imagenet_wnids

    recorded = (meta.get("split") or {}).get("wnids")
    if recorded and len(recorded) == len(meta["classes"]):
        return list(recorded)
    return imagenet_wnids() if len(meta["classes"]) == 1000 else None


def checkpoint_split(checkpoint: str | Path, meta: CheckpointMeta, split: str, data: str | Path | None,
                     variant: str | None = None) -> tuple[SplitManifest, list[Item]]:
    """The manifest and items to evaluate: a folder given by the user (an ImageNet ``variant``
    such as imagenet-r when named), or a split of the run."""
    from ..data.splits import folder_manifest

    if variant is not None:
        from ..data.variants import variant_manifest

        if data is None:
            raise ValueError(f"name the {variant} folder with --data DIR")
        manifest = variant_manifest(variant, data, meta["classes"], _wnids(meta))
        return manifest, manifest.test
    if data is not None:
        from ..data.folders import list_classes

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
    from ..checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    run_dir = (ckpt if ckpt.is_dir() else ckpt.parent).parent
    if not (run_dir / "splits.json").is_file():
        raise FileNotFoundError(f"no splits.json beside the checkpoint in {run_dir}; pass --data DIR")
    manifest = SplitManifest.load(run_dir / "splits.json")
    if manifest.classes != meta["classes"]:
        raise ValueError(f"class list of {run_dir / 'splits.json'} differs from the checkpoint's")
    items = manifest.split(split)
    if not items:
        raise ValueError(f"split {split!r} of this run is empty")
    if any(y < 0 for _, y in items):
        raise ValueError(f"split {split!r} of this run holds images without a known class (data.unlabeled): "
                         "it cannot be scored")
    return manifest, items


def run_teacher(checkpoint: str | Path, meta: CheckpointMeta, run_cfg: RunConfig, base: Teacher) -> Teacher:
    """The teacher the run trained against: ``base``, or the few-shot teacher fitted again on the
    run's labeled shots (from its splits.json) when the run had one (``teacher.adapter``)."""
    from ..teachers.fewshot import fit_fewshot_teacher
    from ..training.plan import training_view_size

    if run_cfg.adapter == "none":
        return base
    manifest, _ = checkpoint_split(checkpoint, meta, "labeled", None)
    return fit_fewshot_teacher(run_cfg, base, manifest, training_view_size(run_cfg, base.image_size))


def checkpoint_logits(checkpoint: str | Path, split: str = "test", data: str | Path | None = None, *,
                      with_teacher: bool = False, device: str = "cpu", batch_size: int = 256,
                      progress: bool = False, variant: str | None = None) -> tuple[SplitLogits, CheckpointMeta, DualHeadStudent]:
    """Logits of a saved student (and optionally its teacher) on a split of its run or a folder.
    On a class-subset test set (ImageNet-R / -A) the other classes' logits are -inf."""
    from ..checkpoint import load_metadata, load_student
    from ..data import ImageStore
    from ..data.variants import mask_logits
    from ..teachers import build_teacher

    meta = load_metadata(checkpoint)
    student = load_student(checkpoint, device=device)
    manifest, items = checkpoint_split(checkpoint, meta, split, data, variant)
    teacher = None
    if with_teacher:
        run_cfg = RunConfig.from_dict(meta["config"])
        teacher = build_teacher(run_cfg.teacher, meta["classes"], run_cfg.data.dataset).to(device)
        if "templates" in meta and list(teacher.templates) != list(meta["templates"]):
            raise ValueError(f"the rebuilt teacher's prompt templates differ from those {checkpoint} was trained with")
        teacher = run_teacher(checkpoint, meta, run_cfg, teacher).to(device)
    logits = own_size_logits(ImageStore(manifest, items, in_memory=False), student, teacher, batch_size=batch_size,
                             device=device, progress=progress, desc=split)
    subset = manifest.info.get("class_subset")
    logits = SplitLogits(logits.labels, *(mask_logits(t, subset) for t in (logits.ce, logits.kd, logits.teacher)))
    return logits, meta, student
