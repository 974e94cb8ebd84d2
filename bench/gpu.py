"""The GPU rows of bench/RESULTS.md in one run: ``bash bench/gpu.sh`` (which makes open_clip
importable first). For each setup of ``step.py`` with an open_clip teacher (random weights: speed
does not depend on them): images/s of our DHO step with the teacher online and from a store, of a
bare student step and of the authors'-style loop; the ratios (1)-(3); and the FLOP rate of our
step (``torch.utils.flop_counter`` on one step) as a fraction of the device's dense bf16 peak.

    python bench/gpu.py [--device cuda|cpu] [--setups rn50 vit] [--rounds N] [--out FILE.json]

``--device cpu`` runs the same path with tiny sizes (batch 1 + 1, one round), for tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dho.data import make_synthetic_folder
from step import RATIOS, candidates, title
from timing import machine, side_by_side

# dense bf16 tensor-core peak, FLOP/s, by the device name's most specific match (vendor data sheets)
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12}
SETUPS = ("rn50", "vit")


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` (forward, backward and what else it runs), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def measure(setup: str, device: torch.device, batch: int, rounds: int, calls: int, root: str, stores: Path) -> dict:
    steps = (rounds + 1) * calls + 4  # warm-up, timed rounds and the two counted steps
    cfg, teacher, amp, fns = candidates(setup, batch, steps, device, root, stores)
    medians = side_by_side(fns, rounds=rounds, calls=calls)
    flops = {name: step_flops(fns[name]) for name in ("ours, online teacher", "ours, teacher from the store")}
    peak = bf16_peak(device)
    row: dict = {"setup": title(setup, cfg, teacher, batch, amp), "device": machine(),
                 "images_per_s": {name: round(2 * batch / t, 1) for name, t in medians.items()},
                 "ratios": {label: round(medians[a] / medians[b], 3) for label, (a, b) in RATIOS.items()}}
    for name, count in flops.items():
        rate = count / medians[name]
        row.setdefault("gflops_per_image", {})[name] = round(count / (2 * batch) / 1e9, 2)
        row.setdefault("tflops", {})[name] = round(rate / 1e12, 3)
        if peak:
            row.setdefault("fraction_of_bf16_peak", {})[name] = round(rate / peak, 3)
    return row


def _print(row: dict) -> None:
    print(f"\n## {row['setup']}\n  {row['device']}")
    for name, rate in row["images_per_s"].items():
        extra = ""
        if name in row.get("tflops", {}):
            extra = f"   {row['tflops'][name]:8.2f} TFLOP/s"
            if name in row.get("fraction_of_bf16_peak", {}):
                extra += f" ({100 * row['fraction_of_bf16_peak'][name]:.1f}% of bf16 peak)"
        print(f"  {name:<44} {rate:10.1f} images/s{extra}")
    for label, ratio in row["ratios"].items():
        print(f"  ratio {label:<44} {ratio:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, help="timed rounds (default 5 on a GPU, 1 on the CPU)")
    parser.add_argument("--calls", type=int, help="steps per round (default 5 on a GPU, 1 on the CPU)")
    parser.add_argument("--batch", type=int, help="per stream (default 64 on a GPU, 1 on the CPU)")
    parser.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    rounds, calls, batch = args.rounds or (5 if gpu else 1), args.calls or (5 if gpu else 1), args.batch or (64 if gpu else 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        per_class = 64 if gpu else 10  # 8 shots per class labeled, the rest unlabeled
        root = str(make_synthetic_folder(Path(tmp) / "data", per_class={"train": per_class, "test": 1}, size=256))
        for setup in args.setups:
            rows.append(measure(setup, device, batch, rounds, calls, root, Path(tmp) / "stores"))
            _print(rows[-1])
            if args.out:  # after each setup: a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
