"""What `precision: auto` should mean on a CPU: fp32 against bf16 autocast, side by side.

The demo's three kinds of work, each timed under both precisions in turn in one process:
the teacher forward (imagenet-bridge at 160 px), the student's training step (EfficientNet-Lite0
at 64 px in channels-last as training runs it, two heads, DHO loss, AdamW) and the student's
evaluation forward; plus the paper's
small-dataset pair (ResNet-18 student at 224 px; an RN50-sized CLIP image tower as the teacher,
random weights). Ratios > 1 mean bf16 is faster. Accuracy under each precision comes from
`dho demo --precision fp32|bf16` (bench/RESULTS.md records both).

    python bench/precision.py [--rounds 5] [--threads 2] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy

import torch

from dho.config import RunConfig
from dho.device import autocast, cpu_has_native_bf16
from dho.losses import method_loss
from dho.students import build_student
from dho.teachers import build_teacher
from dho.training.optim import build_optimizer
from timing import machine, report, side_by_side

CLASSES = [f"class {i}" for i in range(10)]


def student_step(student, teacher_logits, batch: torch.Tensor, labels: torch.Tensor, dtype):
    """One DHO step of ``student`` on ``batch`` (labeled half first) under autocast ``dtype``."""
    cfg = RunConfig()
    optimizer = build_optimizer(student, cfg.optim)
    cpu = torch.device("cpu")

    def step() -> None:
        with autocast(cpu, dtype):
            out = student(batch)
        losses = method_loss("dho", out, labels, teacher_logits, len(labels), cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    return step


def forward(model, batch: torch.Tensor, dtype):
    """The eval-mode forward of ``model`` on ``batch`` under autocast ``dtype``."""
    cpu = torch.device("cpu")

    @torch.no_grad()
    def run() -> None:
        with autocast(cpu, dtype):
            model(batch)

    return run


def teacher_forward(teacher, batch: torch.Tensor, dtype):
    """The teacher's forward at ``dtype`` (a teacher applies its own autocast)."""
    def run() -> None:
        teacher.autocast_dtype = dtype
        teacher(batch)

    return run


def measure(name: str, student_cfg: dict, teacher_cfg: dict, size: int, teacher_size: int, batch: int,
            rounds: int) -> None:
    torch.manual_seed(0)
    cfg = RunConfig().override({**student_cfg, **teacher_cfg})
    teacher = build_teacher(cfg.teacher, CLASSES)
    student = build_student(cfg.student, CLASSES).train()
    if cfg.channels_last:  # as train() runs a student (NHWC; the fp32 fast path on the CPU)
        student.to(memory_format=torch.channels_last)
        student.preprocess.channels_last = True
    images = torch.randint(0, 256, (2 * batch, 3, size, size), dtype=torch.uint8)
    teacher_images = torch.randint(0, 256, (2 * batch, 3, teacher_size, teacher_size), dtype=torch.uint8)
    labels = torch.randint(0, len(CLASSES), (batch,))
    t_out = teacher(teacher_images)
    evaluated = copy.deepcopy(student).eval()
    candidates = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        candidates[f"teacher forward, {label}"] = teacher_forward(teacher, teacher_images, dtype)
        candidates[f"student train step, {label}"] = student_step(student, t_out, images, labels, dtype)
        candidates[f"student eval forward, {label}"] = forward(evaluated, images, dtype)
    medians = side_by_side(candidates, rounds=rounds)
    report(f"{name}: {2 * batch} images per call", medians, {
        f"{part}: fp32 / bf16": (f"{part}, fp32", f"{part}, bf16")
        for part in ("teacher forward", "student train step", "student eval forward")}, per=2 * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="images per stream (the step sees twice as many)")
    parser.add_argument("--setups", nargs="+", default=["demo", "paper"], choices=("demo", "paper"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {machine()}; native bf16: {cpu_has_native_bf16()}")
    if "demo" in args.setups:
        measure("demo (EfficientNet-Lite0 at 64 px, imagenet-bridge teacher at 160 px)",
                {"student.backbone": "efficientnet_lite0", "student.pretrained": True, "student.image_size": 64},
                {"teacher.kind": "imagenet-bridge", "teacher.image_size": 160}, 64, 160, args.batch, args.rounds)
    if "paper" in args.setups:
        measure("paper small-dataset pair (ResNet-18 at 224 px, RN50 CLIP tower teacher, random weights)",
                {"student.backbone": "resnet18", "student.image_size": 224},
                {"teacher.kind": "openclip", "teacher.model": "RN50"}, 224, 224, max(1, args.batch // 8), args.rounds)


if __name__ == "__main__":
    main()
