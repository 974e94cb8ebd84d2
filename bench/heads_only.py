"""Benchmark (4): heads-only training (frozen backbone, features and teacher outputs computed once)
against a bare two-Linear training step on random tensors, side by side in one process.

Ours: the training loop's step on :class:`dho.training.batches.FeatureBatches` (gather the batch's rows,
both heads, the DHO loss, the all-ranks finiteness check, AdamW, the schedule). Bare: two
``nn.Linear`` on a fixed tensor with the same loss and optimiser. Target: ours >= 0.5x bare.

    python bench/heads_only.py [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from dho.config import LossConfig, OptimConfig, RunConfig
from dho.data import ImageStore, TrainViews, make_synthetic_folder
from dho.data.splits import splits_for
from dho.losses import method_loss
from dho.students import build_student
from dho.teachers import TeacherOutput
from dho.training.batches import FeatureBatches
from dho.training.distributed import DistContext, all_finite
from dho.training.optim import build_optimizer, build_scheduler
from dho.training.plan import planned_views
from timing import machine, report, side_by_side

SETUPS = {  # name -> (backbone giving D, classes, batch per stream)
    "EfficientNet-Lite0 features (1280-d), 10 classes, 64 + 64": ("efficientnet_lite0", 10, 64),
    "ResNet-50 features (2048-d), 1000 classes, 256 + 256": ("resnet50", 1000, 256),
}


def ours(root: str, backbone: str, classes: int, batch: int, steps: int):
    cfg = RunConfig().override({"data.root": root, "data.shots": 4, "data.num_views": 4, "optim.batch_size": batch,
                                "optim.epochs": steps, "optim.max_steps": steps, "student.backbone": backbone,
                                "student.freeze_backbone": True})
    manifest = splits_for(cfg.data)
    student = build_student(cfg.student, [f"c{i}" for i in range(classes)]).freeze_backbone()
    dim = student.spec["num_features"]
    views = {n: TrainViews(ImageStore(manifest, manifest.split(n)), 8, cfg.optim.crop_scale, cfg.seed, num_views=4)
             for n in ("labeled", "unlabeled")}
    gen = torch.Generator().manual_seed(0)

    def embed(images):
        return torch.randn(len(images), dim, generator=gen)

    def teacher(images, keys):
        return TeacherOutput(F.normalize(torch.randn(len(images), 64, generator=gen), dim=-1),
                             10 * torch.randn(len(images), classes, generator=gen))

    plan = planned_views(cfg, manifest)
    batches = FeatureBatches(views, plan, batch, cfg.seed, torch.device("cpu"), embed, teacher)
    # the synthetic set has 4 classes; labels index the student's C outputs all the same
    optimizer = build_optimizer(student, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig(), 10**9)
    loss_cfg, ctx = LossConfig(), DistContext()

    def step():
        b = next(batches)
        out = student(features=b.inputs)
        losses = method_loss("dho", out, b.labels, b.teacher, b.num_labeled, loss_cfg)
        if not all_finite(ctx, losses["loss"]):
            raise FloatingPointError
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
    return step, dim


def bare(dim: int, classes: int, batch: int):
    ce_head, kd_head = nn.Linear(dim, classes), nn.Linear(dim, classes)
    optimizer = torch.optim.AdamW([*ce_head.parameters(), *kd_head.parameters()], lr=1e-3, weight_decay=1e-2)
    z, t = torch.randn(2 * batch, dim), torch.randn(2 * batch, classes)
    y = torch.randint(0, classes, (batch,))

    def kl(s, t):
        return F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), reduction="batchmean", log_target=True) * 4

    def step():
        kd = kd_head(z)
        loss = 0.5 * F.cross_entropy(ce_head(z[:batch]), y) + 0.5 * (kl(kd[:batch], t[:batch]) + kl(kd[batch:], t[batch:]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50, help="steps per timed round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# heads-only training: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = str(make_synthetic_folder(tmp, per_class={"train": 60, "test": 2}, size=8))
        for name, (backbone, classes, batch) in SETUPS.items():
            steps = (args.rounds + 1) * args.calls + 10
            ours_step, dim = ours(root, backbone, classes, batch, steps)
            medians = side_by_side({"heads-only step (dho)": ours_step, "bare two-Linear step": bare(dim, classes, batch)},
                                   rounds=args.rounds, calls=args.calls)
            report(name, medians, {"throughput, ours / bare": ("bare two-Linear step", "heads-only step (dho)")},
                   per=2 * batch)


if __name__ == "__main__":
    main()
