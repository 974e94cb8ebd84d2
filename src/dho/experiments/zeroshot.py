"""A teacher's accuracy on one split of a run's data (``dho zeroshot``): zero-shot, and few-shot
too when the run's teacher has an adapter (``teacher.adapter``: Tip-Adapter(-F) on the labeled shots)."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import RunConfig
from ..evaluate import collect_logits, score

__all__ = ["zeroshot_accuracy"]

log = logging.getLogger(__name__)


def zeroshot_accuracy(cfg: RunConfig, split: str = "test", *, progress: bool = False) -> dict:
    """The teacher's accuracy on one split of ``cfg.data``: ``teacher`` (zero-shot) and, when
    ``teacher.adapter`` names one (``tip``, ``tip-f``, or a ``teacher.adapter_file``; ``auto`` is the
    zero-shot teacher here), ``teacher_f``: the few-shot teacher fitted on the run's labeled shots as
    training fits it. Without an adapter no labels are used, so classes with fewer images than
    ``data.shots`` are no error here."""
    from ..data import EvalViews, ImageStore
    from ..data.splits import splits_for
    from ..device import resolve_device
    from ..teachers import build_teacher
    from ..teachers.fewshot import fit_fewshot_teacher
    from ..training.plan import training_view_size

    adapter = cfg.adapter if cfg.teacher.adapter != "auto" or cfg.teacher.adapter_file else "none"
    data = cfg.data if adapter != "none" else replace(cfg.data, small_classes="take_all")
    manifest = splits_for(data)
    device = resolve_device(cfg.device)
    teacher = build_teacher(cfg.teacher, manifest.classes, cfg.data.dataset).to(device)
    views = EvalViews(ImageStore(manifest, manifest.split(split), in_memory=False), teacher.image_size)
    logits = collect_logits(views, None, teacher, batch_size=cfg.eval.batch_size, device=device, progress=progress, desc=split)
    out = {"teacher_id": teacher.id, "split": split, "templates": list(teacher.templates), **score(logits)}
    if adapter != "none":
        few = fit_fewshot_teacher(replace(cfg, data=data), teacher, manifest, training_view_size(cfg, teacher.image_size))
        few_logits = collect_logits(views, None, few.to(device), batch_size=cfg.eval.batch_size, device=device,
                                    progress=progress, desc=f"{split} (few-shot)")
        out.update(teacher_f_id=few.id, teacher_f=score(few_logits)["teacher"], labeled=len(manifest.labeled))
    return out
