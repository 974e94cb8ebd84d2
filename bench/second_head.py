"""Benchmark (5): what the second head costs at inference (the paper's Table 2).

One student with h_CE alone vs the DHO student (h_CE + h_KD, mixed with alpha/beta): parameters,
FLOPs per image (torch's FLOP counter) and images/s, side by side in one process.

    python bench/second_head.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from dho.config import StudentConfig
from dho.mixing import mix_probs
from dho.students import build_student
from timing import machine, report, side_by_side

SETUPS = {  # name -> (backbone, input size, classes, batch)
    "ResNet-18, 224 px, 1000 classes (paper Table 2)": ("resnet18", 224, 1000, 32),
    "EfficientNet-Lite0, 64 px, 10 classes (the CPU demo)": ("efficientnet_lite0", 64, 10, 256),
}


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.inference_mode()
def measure(name: str, backbone: str, size: int, classes: int, batch: int, rounds: int) -> None:
    names = [f"c{i}" for i in range(classes)]
    cfg = StudentConfig(backbone=backbone, image_size=size)
    single = build_student(cfg, names, dual_head=False).eval().to(memory_format=torch.channels_last)
    dual = build_student(cfg, names, dual_head=True).eval().to(memory_format=torch.channels_last)
    dual.load_state_dict({**dual.state_dict(), **single.state_dict()})  # same backbone and h_CE
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)

    def run_single():
        return single(images).ce_logits.softmax(-1)

    def run_dual():
        out = dual(images)
        return mix_probs(out.ce_logits, out.kd_logits, 0.5, 0.5)

    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("single", single), ("dual", dual))}
    fl = {"single": flops(run_single) / batch, "dual": flops(run_dual) / batch}
    medians = side_by_side({"h_CE only": run_single, "h_CE + h_KD, mixed": run_dual}, rounds=rounds)
    report(name, medians, {"time, dual / single": ("h_CE + h_KD, mixed", "h_CE only")}, per=batch)
    print(f"  params {params['single'] / 1e6:.2f}M -> {params['dual'] / 1e6:.2f}M "
          f"(+{100 * (params['dual'] / params['single'] - 1):.2f}%); "
          f"GFLOPs/image {fl['single'] / 1e9:.4f} -> {fl['dual'] / 1e9:.4f} (+{100 * (fl['dual'] / fl['single'] - 1):.3f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# second head at inference: {machine()}")
    for name, setup in SETUPS.items():
        measure(name, *setup, rounds=args.rounds)


if __name__ == "__main__":
    main()
