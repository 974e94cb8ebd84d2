"""Which offline teacher: the imagenet-bridge teacher's choices measured on CIFAR-10 and Caltech101.

For each ImageNet classifier (EfficientNet-Lite0 / 1 / 2) and input size, the 1000-way ImageNet
probabilities of every image are computed once; each bridge (the text bridge at several
temperatures, with or without WordNet's hierarchy, first or all senses of a class name) is then a
matrix product. Validation chooses, test reports: CIFAR-10 validation = 200 training images per
class (seed 0), test = its 10,000 test images; Caltech101 = CoOp's val (1,649) and test (2,465)
splits. Images/s of each classifier and size are timed side by side in this process on one batch,
as a ratio to today's default (Lite0 at 160 px).

    python bench/teacher_study.py [--threads 2] [--out bench/teacher_study.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

from dho.config import TeacherConfig
from dho.data.benchmarks import read_pools
from dho.data.cifar import prepare_cifar10
from dho.data.folders import list_classes, scan_folder
from dho.data.images import decode_image, eval_view
from dho.data.shared import prepare_shared
from dho.teachers import build_teacher
from dho.teachers.imagenet_bridge import hierarchy_bridge, imagenet_wnids
from dho.teachers.wordnet import NounHierarchy, find_wordnet, kinds_of
from timing import machine

CLASSIFIERS = [("efficientnet_lite0", 160), ("efficientnet_lite1", 160), ("efficientnet_lite2", 160),
               ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
TAUS = (0.05, 0.1, 0.2)
WORDNET = ("off", "first", "all")


def cifar_splits() -> dict:
    root = prepare_cifar10()
    classes = list_classes(root / "train")
    train, test = scan_folder(root / "train", classes), scan_folder(root / "test", classes)
    rng = random.Random(0)
    val = [(p, y) for y, c in enumerate(classes) for p in rng.sample(train[c], 200)]
    return {"classes": classes, "dataset": None, "val": val,
            "test": [(p, y) for y, c in enumerate(classes) for p in test[c]]}


def caltech_splits() -> dict:
    pools = read_pools("coop", prepare_shared("caltech101"), "caltech101")
    return {"classes": pools.classes, "dataset": "caltech101",
            "val": [(pools.image_root / p, y) for p, y in pools.val], "test": [(pools.image_root / p, y) for p, y in pools.test]}


@torch.no_grad()
def imagenet_probs(teacher, images: list[torch.Tensor], size: int, batch: int = 64) -> torch.Tensor:
    """[N, 1000] ImageNet probabilities of the teacher's classifier on centre crops at ``size``."""
    out = []
    for i in range(0, len(images), batch):
        pixels = teacher.preprocess(torch.stack([eval_view(im, size) for im in images[i:i + batch]]))
        pooled = teacher.encode_image(pixels).float()
        out.append(torch.softmax(teacher.classifier.get_classifier()(pooled), dim=-1))
    return torch.cat(out)


def images_per_second(teacher, images: list[torch.Tensor], size: int, rounds: int = 5) -> float:
    batch = torch.stack([eval_view(im, size) for im in images[:64]])
    teacher(batch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        teacher(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/teacher_study.json")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of each split (a smoke run)")
    parser.add_argument("--classifiers", nargs="*", default=None, help="e.g. efficientnet_lite1@240 (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wordnet_dir = find_wordnet()
    hierarchy = NounHierarchy.load(wordnet_dir) if wordnet_dir else None
    wnids = imagenet_wnids()
    data = {"cifar10": cifar_splits(), "caltech101": caltech_splits()}
    if args.limit:
        def every(items: list) -> list:
            return items[::max(1, len(items) // args.limit)]

        data = {name: {**d, "val": every(d["val"]), "test": every(d["test"])} for name, d in data.items()}
    classifiers = [c for c in CLASSIFIERS if args.classifiers is None or f"{c[0]}@{c[1]}" in args.classifiers]
    decoded = {name: {split: [decode_image(p) for p, _ in d[split]] for split in ("val", "test")} for name, d in data.items()}
    labels = {name: {split: torch.tensor([y for _, y in d[split]]) for split in ("val", "test")} for name, d in data.items()}
    rows, speeds = [], {}
    for backbone, size in classifiers:
        started = time.time()
        for name, d in data.items():
            base = TeacherConfig(kind="imagenet-bridge", image_size=size, bridge_backbone=backbone)
            teacher = build_teacher(base, d["classes"], d["dataset"])
            speeds.setdefault(f"{backbone}@{size}", images_per_second(teacher, decoded["caltech101"]["test"], size))
            probs = {split: imagenet_probs(teacher, decoded[name][split], size) for split in ("val", "test")}
            names = [c.replace("_", " ") for c in d["classes"]]
            kinds = {s: kinds_of(hierarchy, wnids, names, s) for s in ("first", "all")} if hierarchy else {}
            for tau, wordnet in itertools.product(TAUS, WORDNET):
                if wordnet != "off" and not kinds:
                    continue
                teacher.tau = tau
                teacher.set_classes(d["classes"], teacher.templates)
                bridge = teacher.bridge if wordnet == "off" else hierarchy_bridge(teacher.bridge, kinds[wordnet])
                acc = {split: float(((probs[split] @ bridge).argmax(-1) == labels[name][split]).double().mean())
                       for split in ("val", "test")}
                rows.append({"dataset": name, "backbone": backbone, "size": size, "tau": tau, "wordnet": wordnet, **acc})
        print(f"{backbone}@{size}: {time.time() - started:.0f} s, {speeds[f'{backbone}@{size}']:.1f} images/s", flush=True)
        reference = speeds.get("efficientnet_lite0@160", next(iter(speeds.values())))
        result = {"machine": machine(), "threads": args.threads, "wordnet": str(wordnet_dir), "limit": args.limit,
                  "images": {name: {split: len(d[split]) for split in ("val", "test")} for name, d in data.items()},
                  "images_per_second": speeds, "cost_vs_lite0_160": {k: reference / v for k, v in speeds.items()}, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))  # after each classifier: a cut-short study keeps its rows
    print(json.dumps({"cost": result["cost_vs_lite0_160"]}, indent=1))
    for row in sorted(rows, key=lambda r: (r["dataset"], -r["val"]))[:]:
        print(f"{row['dataset']:<11} {row['backbone']:<19} {row['size']:>4} tau {row['tau']:<5} wordnet {row['wordnet']:<6} "
              f"val {100 * row['val']:.2f} test {100 * row['test']:.2f}")


if __name__ == "__main__":
    main()
