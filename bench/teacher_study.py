"""Which offline teacher: the imagenet-bridge teacher's choices measured on CIFAR-10 and Caltech101.

For each ImageNet classifier (EfficientNet-Lite0 / 1 / 2) and input size, the 1000-way ImageNet
probabilities of every image are computed once; each bridge (the text bridge at several
temperatures, with or without WordNet's hierarchy, first or all senses of a class name) is then a
matrix product. Validation chooses, test reports: CIFAR-10 validation = 200 training images per
class (seed 0), test = its 10,000 test images; Caltech101 = CoOp's val (1,649) and test (2,465)
splits. Images/s of each classifier and size are timed side by side in this process on one batch of
64 Caltech101 test images, taking turns, as a ratio to the former default (Lite0 at 160 px).

    python bench/teacher_study.py [--threads 2] [--out bench/teacher_study.json] [--speed-only]
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
# the hierarchy as the teacher uses it ("first", "all": covered rows replaced, then every column
# renormalised), and without the renormalisation ("first/raw", "all/raw")
WORDNET = ("off", "first", "all", "first/raw", "all/raw")


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


def side_by_side_speed(images: list[torch.Tensor], rounds: int = 7) -> dict[str, float]:
    """Images/s of each classifier's teacher forward on the same 64 images, the classifiers taking
    turns within each round (so a slower moment of the machine falls on all of them); the median."""
    teachers = {f"{b}@{s}": (build_teacher(TeacherConfig(kind="imagenet-bridge", image_size=s, bridge_backbone=b), ["a", "b"]), s)
                for b, s in CLASSIFIERS}
    batches = {key: torch.stack([eval_view(im, size) for im in images[:64]]) for key, (_, size) in teachers.items()}
    times: dict[str, list[float]] = {key: [] for key in teachers}
    for key, (teacher, _) in teachers.items():
        teacher(batches[key])  # warm-up
    for _ in range(rounds):
        for key, (teacher, _) in teachers.items():
            start = time.perf_counter()
            teacher(batches[key])
            times[key].append(time.perf_counter() - start)
    return {key: 64 / sorted(t)[len(t) // 2] for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/teacher_study.json")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of each split (a smoke run)")
    parser.add_argument("--classifiers", nargs="*", default=None, help="e.g. efficientnet_lite1@240 (default: all)")
    parser.add_argument("--speed-only", action="store_true", help="only the side-by-side images/s, into --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_only:
        speeds = side_by_side_speed([decode_image(p) for p, _ in caltech_splits()["test"][:64]])
        reference = speeds["efficientnet_lite0@160"]
        result = {"machine": machine(), "threads": args.threads, "images_per_second": speeds,
                  "cost_vs_lite0_160": {k: reference / v for k, v in speeds.items()}}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
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
    rows: list[dict] = []
    result: dict = {}
    for backbone, size in classifiers:
        started = time.time()
        for name, d in data.items():
            base = TeacherConfig(kind="imagenet-bridge", image_size=size, bridge_backbone=backbone)
            teacher = build_teacher(base, d["classes"], d["dataset"])
            probs = {split: imagenet_probs(teacher, decoded[name][split], size) for split in ("val", "test")}
            names = [c.replace("_", " ") for c in d["classes"]]
            kinds = {s: kinds_of(hierarchy, wnids, names, s) for s in ("first", "all")} if hierarchy else {}
            for tau, wordnet in itertools.product(TAUS, WORDNET):
                if wordnet != "off" and not kinds:
                    continue
                teacher.tau = tau
                teacher.set_classes(d["classes"], teacher.templates)
                senses, _, raw = wordnet.partition("/")
                if wordnet == "off":
                    bridge = teacher.bridge
                elif raw:
                    rows = kinds[senses].float() / kinds[senses].float().sum(dim=1, keepdim=True).clamp(min=1)
                    bridge = torch.where(kinds[senses].any(dim=1, keepdim=True), rows, teacher.bridge)
                else:
                    bridge = hierarchy_bridge(teacher.bridge, kinds[senses])
                acc = {split: float(((probs[split] @ bridge).argmax(-1) == labels[name][split]).double().mean())
                       for split in ("val", "test")}
                rows.append({"dataset": name, "backbone": backbone, "size": size, "tau": tau, "wordnet": wordnet, **acc})
        print(f"{backbone}@{size}: {time.time() - started:.0f} s", flush=True)
        result = {"machine": machine(), "threads": args.threads, "wordnet": str(wordnet_dir), "limit": args.limit,
                  "images": {name: {split: len(d[split]) for split in ("val", "test")} for name, d in data.items()}, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))  # after each classifier: a cut-short study keeps its rows
    speeds = side_by_side_speed(decoded["caltech101"]["test"])
    reference = speeds["efficientnet_lite0@160"]
    result.update(images_per_second=speeds, cost_vs_lite0_160={k: reference / v for k, v in speeds.items()})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"cost": result["cost_vs_lite0_160"]}, indent=1))
    for row in sorted(rows, key=lambda r: (r["dataset"], -r["val"]))[:]:
        print(f"{row['dataset']:<11} {row['backbone']:<19} {row['size']:>4} tau {row['tau']:<5} wordnet {row['wordnet']:<6} "
              f"val {100 * row['val']:.2f} test {100 * row['test']:.2f}")


if __name__ == "__main__":
    main()
