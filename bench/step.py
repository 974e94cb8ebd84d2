"""Benchmarks (1)-(3): one DHO training step, measured side by side in one process.

(1) our DHO step (crops, teacher, student, two heads, loss, AdamW) vs the floor: the same
    teacher forward plus a bare student train step (backbone + one Linear, CE, AdamW) on a ready
    batch, with the same kernels (precision, channels_last). Target: <= 1.10x.
(2) our DHO step vs a loop written the way the authors' code works: images decoded from files
    with PIL each step, torchvision RandomResizedCrop/flip/ToTensor/Normalize on float tensors, an
    fp32 student without channels_last, teacher and student called separately on the labeled and
    unlabeled halves. Targets on one GPU: >= 3x (ResNet-18/RN50), >= 2x (ViT-B/16 / ViT-L/14).
(3) our step with the teacher replayed from a store (``dho cache-teacher``; fp16, memory-mapped)
    vs online, and vs a bare student step. Targets: >= 2x online for the ViT teacher; >= 0.9x a
    bare student step on the CPU.

Teachers are open_clip models with random weights (speed does not depend on the weights), except
the CPU demo's imagenet-bridge teacher. Images: a synthetic ImageFolder at 256 px (PNG files).

    python bench/step.py [--setups rn50 vit demo] [--batch N] [--rounds 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from dho.config import RunConfig
from dho.data import ImageStore, TrainViews, make_synthetic_folder
from dho.data.splits import splits_for
from dho.device import autocast, resolve_precision
from dho.losses import method_loss
from dho.students import build_student
from dho.teachers import TeacherOutput, build_teacher
from dho.teachers.cache import TeacherCache
from dho.training.batches import ImageBatches
from dho.training.distributed import DistContext, all_finite
from dho.training.optim import build_optimizer, build_scheduler
from dho.training.plan import planned_views
from dho.training.precompute import teacher_job, teacher_requests
from timing import machine, report, side_by_side

# name -> (student backbone, student px, teacher overrides, default batch per stream on GPU / CPU)
SETUPS = {
    "rn50": ("resnet18", 224, {"teacher.kind": "openclip", "teacher.model": "RN50"}, (64, 8)),
    "vit": ("vit_base_patch16_224", 224, {"teacher.kind": "openclip", "teacher.model": "ViT-L-14"}, (64, 2)),
    "demo": ("efficientnet_lite0", 64, {"teacher.kind": "imagenet-bridge", "teacher.image_size": 160}, (64, 64)),
}


def build(setup: str, root: str, batch: int, steps: int, device: torch.device, store_dir: Path):
    backbone, size, teacher_over, _ = SETUPS[setup]
    # the zero-shot teacher (no adapter: its key views would only lengthen the store), random student weights
    cfg = RunConfig().override({**teacher_over, "teacher.adapter": "none", "data.root": root, "data.shots": 8,
                                "data.num_views": 2, "data.view_size": size, "data.val_fraction": 0.0,
                                "student.backbone": backbone, "student.image_size": size,
                                "student.pretrained": setup == "demo", "optim.batch_size": batch, "optim.epochs": steps,
                                "optim.max_steps": steps, "loss.method": "dho"})
    manifest = splits_for(cfg.data)
    teacher = build_teacher(cfg.teacher, manifest.classes).to(device)
    amp = resolve_precision("auto", device)
    views = {n: TrainViews(ImageStore(manifest, manifest.split(n)), size, cfg.optim.crop_scale, cfg.seed, num_views=2)
             for n in ("labeled", "unlabeled")}
    # the store a `dho cache-teacher` run would write for these steps
    requests = list(teacher_requests([cfg], teacher, eval_splits=False).values())
    cache = TeacherCache(teacher)
    for start in range(0, len(requests), 256):
        keys, feats, logits = teacher_job(cfg, requests[start:start + 256])
        cache.update(keys, TeacherOutput(feats, logits))
    cache.save(store_dir / setup, dtype="float16")
    cache = TeacherCache.load(teacher, store_dir / setup)
    assert len(cache) >= sum(len(p) for p in planned_views(cfg, manifest).values())
    return cfg, manifest, teacher, views, cache, amp


def ours(cfg, teacher, views, device, amp, cache=None):
    student = build_student(cfg.student, teacher.classnames).to(device)
    student.to(memory_format=torch.channels_last)
    student.preprocess.channels_last = True

    @torch.no_grad()
    def teacher_fn(images, keys):
        if cache is not None:
            return cache.outputs(images, keys)
        with autocast(device, amp):
            out = teacher(images)
        return TeacherOutput(out.features.float(), out.logits.float())
    batches = ImageBatches(views, cfg.optim.batch_size, cfg.seed, device, teacher_fn)
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10**9)
    ctx = DistContext()

    def step():
        b = next(batches)
        with autocast(device, amp):
            out = student(b.inputs)
        losses = method_loss("dho", out, b.labels, b.teacher, b.num_labeled, cfg.loss)
        if not all_finite(ctx, losses["loss"]):
            raise FloatingPointError
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
    return step


def floor(cfg, teacher, device, amp, with_teacher=True):
    """Teacher forward + a bare student step (backbone + one Linear, CE) on a ready uint8 batch."""
    student = build_student(cfg.student, teacher.classnames, dual_head=False).to(device)
    student.to(memory_format=torch.channels_last)
    student.preprocess.channels_last = True
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-2)
    size, n = cfg.student.image_size, 2 * cfg.optim.batch_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, len(teacher.classnames), (n,), device=device)

    def step():
        if with_teacher:
            with torch.no_grad(), autocast(device, amp):
                teacher(images)
        with autocast(device, amp):
            logits = student(images).ce_logits
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def authors_style(cfg, manifest, teacher, device):
    """The authors' loop: PIL decode + float transforms per step, fp32, no channels_last,
    teacher and student each called on the labeled and the unlabeled half separately."""
    size, batch = cfg.student.image_size, cfg.optim.batch_size
    student = build_student(cfg.student, teacher.classnames).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-2)
    tfm = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    s_norm = T.Normalize(list(student.spec.mean), list(student.spec.std))
    t_norm = T.Normalize(teacher.preprocess.mean.flatten().tolist(), teacher.preprocess.std.flatten().tolist())
    paths = {name: [manifest.path(p) for p, _ in manifest.split(name)] for name in ("labeled", "unlabeled")}
    labels_all = torch.tensor([y for _, y in manifest.labeled])
    gen = torch.Generator().manual_seed(0)

    def load(name):
        idx = torch.randint(0, len(paths[name]), (batch,), generator=gen).tolist()
        images = torch.stack([tfm(Image.open(paths[name][i]).convert("RGB")) for i in idx])
        return images.to(device), labels_all[torch.tensor(idx) % len(labels_all)].to(device)

    def teacher_logits(x):  # the teacher at its own input size, normalised its way
        x = F.interpolate(x, size=teacher.image_size, mode="bilinear", antialias=True) if x.shape[-1] != teacher.image_size else x
        return teacher.logits_from_features(F.normalize(teacher.encode_image(t_norm(x)).float(), dim=-1))

    def kd(s, t):
        return F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4

    def step():
        (xl, y), (xu, _) = load("labeled"), load("unlabeled")
        with torch.no_grad():
            tl, tu = teacher_logits(xl), teacher_logits(xu)
        zl = student.backbone(s_norm(xl))
        zu = student.backbone(s_norm(xu))
        loss = 0.5 * F.cross_entropy(student.ce_head(zl), y) + 0.5 * (kd(student.kd_head(zl), tl) + kd(student.kd_head(zu), tu))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def candidates(setup: str, batch: int, steps: int, device: torch.device, root: str, store_dir: Path):
    """The five steps compared, built for ``steps`` calls each: (cfg, teacher, name -> step)."""
    cfg, manifest, teacher, views, cache, amp = build(setup, root, batch, steps, device, store_dir)
    return cfg, teacher, amp, {
        "ours, online teacher": ours(cfg, teacher, views, device, amp),
        "ours, teacher from the store": ours(cfg, teacher, views, device, amp, cache),
        "floor: teacher fwd + bare student step": floor(cfg, teacher, device, amp),
        "bare student step": floor(cfg, teacher, device, amp, with_teacher=False),
        "authors'-style loop": authors_style(cfg, manifest, teacher, device),
    }


RATIOS = {
    "(1) ours online / floor  [<= 1.10]": ("ours, online teacher", "floor: teacher fwd + bare student step"),
    "(2) authors'-style / ours online": ("authors'-style loop", "ours, online teacher"),
    "(2) authors'-style / ours from store": ("authors'-style loop", "ours, teacher from the store"),
    "(3) online / from store": ("ours, online teacher", "ours, teacher from the store"),
    "(3) bare student / ours from store [>=0.9]": ("bare student step", "ours, teacher from the store"),
}


def title(setup: str, cfg, teacher, batch: int, amp) -> str:
    return (f"{setup}: {cfg.student.backbone} @ {cfg.student.image_size} px, teacher {teacher.id} @ {teacher.image_size} px, "
            f"batch {batch} + {batch}, {'bf16 autocast' if amp else 'fp32'}")


def run(setup: str, args, device: torch.device, root: str, store_dir: Path) -> None:
    batch = args.batch or SETUPS[setup][3][0 if device.type == "cuda" else 1]
    steps = (args.rounds + 1) * args.calls + 2
    cfg, teacher, amp, steps_fns = candidates(setup, batch, steps, device, root, store_dir)
    medians = side_by_side(steps_fns, rounds=args.rounds, calls=args.calls)
    report(title(setup, cfg, teacher, batch, amp), medians, RATIOS, per=2 * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batch", type=int, help="per stream (default: 64 on a GPU, smaller on a CPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2, help="steps per timed round")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    print(f"# DHO training step: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = str(make_synthetic_folder(Path(tmp) / "data", per_class={"train": 64, "test": 1}, size=256))
        for setup in args.setups:
            run(setup, args, device, root, Path(tmp) / "stores")


if __name__ == "__main__":
    main()
