"""What a run will do, known from its config and splits before it starts: steps per epoch and in
all, the size of the training crops, and the (index, view) pairs each data stream will draw (what
a teacher store must hold to replay the run)."""

from __future__ import annotations

from ..config import RunConfig
from ..data import SplitManifest, StreamSampler
from ..methods import METHOD_SPECS

__all__ = ["planned_views", "steps_per_epoch", "total_steps", "training_view_size"]


def steps_per_epoch(cfg: RunConfig, manifest: SplitManifest) -> int:
    """Authors' definitions: one pass over the labeled set (few-shot) or the unlabeled set (ImageNet),
    in ceil(n / batch_size) steps as their loaders keep the last partial batch (``optim.epoch_rounding``).
    Our batches are always full (the streams run on across passes), so an epoch of ceil steps
    draws up to one batch more than n images."""
    n = len(manifest.labeled if cfg.optim.epoch_mode == "labeled" else manifest.unlabeled)
    whole, rest = divmod(n, cfg.optim.batch_size)
    return max(1, whole + (rest > 0 and cfg.optim.epoch_rounding == "ceil"))


def training_view_size(cfg: RunConfig, teacher_size: int) -> int:
    """The size of training crops: ``data.view_size``, else the larger of the two models' inputs."""
    return cfg.data.view_size or max(cfg.student.image_size, teacher_size)


def total_steps(cfg: RunConfig, manifest: SplitManifest) -> int:
    steps = cfg.optim.epochs * steps_per_epoch(cfg, manifest)
    return min(steps, cfg.optim.max_steps) if cfg.optim.max_steps else steps


def planned_views(cfg: RunConfig, manifest: SplitManifest) -> dict[str, list[tuple[int, int]]]:
    """The (index, view) pairs of each stream that a run of ``cfg`` will draw, for precomputing
    teacher outputs. The streams are the ones :func:`train` builds, replayed without images."""
    spec, steps = METHOD_SPECS[cfg.loss.method], total_steps(cfg, manifest)
    plan = {}
    for name, items, used in (("labeled", manifest.labeled, spec.labeled), ("unlabeled", manifest.unlabeled, spec.unlabeled)):
        if not used:
            continue
        batches = iter(StreamSampler(len(items), cfg.optim.batch_size, cfg.seed, name))
        n = cfg.data.num_views
        keys = {(i, p % n if n else p) for _ in range(steps) for i, p in next(batches)}
        plan[name] = sorted(keys)
    return plan
