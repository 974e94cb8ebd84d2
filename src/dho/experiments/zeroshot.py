"""A teacher's zero-shot accuracy on one split of a run's data (``dho zeroshot``)."""

from __future__ import annotations

from ..config import RunConfig
from ..evaluate import collect_logits, score

__all__ = ["zeroshot_accuracy"]


def zeroshot_accuracy(cfg: RunConfig, split: str = "test", *, progress: bool = False) -> dict:
    """The teacher's zero-shot accuracy on one split of ``cfg.data`` (a RunConfig)."""
    from ..data import EvalViews, ImageStore
    from ..data.splits import splits_for
    from ..device import resolve_device
    from ..teachers import build_teacher

    d = cfg.data
    manifest = splits_for(d)
    device = resolve_device(cfg.device)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset).to(device)
    views = EvalViews(ImageStore(manifest, manifest.split(split), in_memory=False), teacher.image_size)
    logits = collect_logits(views, None, teacher, batch_size=cfg.eval.batch_size, device=device, progress=progress, desc=split)
    return {"teacher_id": teacher.id, "split": split, "templates": list(teacher.templates), **score(logits)}
