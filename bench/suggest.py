"""Does labeling the images ``dho suggest`` picks beat labeling as many random ones? CIFAR-10.

Per seed: 10 labeled images per class and a pool of 5,000 other images drawn from CIFAR-10's
train split; a DHO-F student fitted as ``dho fit`` fits it (EfficientNet-Lite0 with its ImageNet
weights, 64 px, Tip-Adapter-F on the offline teacher, ``FitSettings`` steps); then N pool images are
labeled (with their CIFAR-10 labels), either the N ``dho suggest`` picks or N drawn at random, and
DHO-F is fitted again on each enlarged labeled set (the pool less the new labels, the same steps).
Every student is scored on one fixed test subset (500 images per class of CIFAR-10's test split).
Validation (``--val``): ``held-out`` (default) sets aside a fifth of each class's base labels as
``val/``, the same images for the three students, so the new labels only train; ``carve`` lets
each fit carve its fifth from all its labels, new ones included (as ``dho fit`` does).
Runs already finished under ``--out`` are reused, so a stopped benchmark goes on where it was.

    python bench/suggest.py [--seeds 1 2 3] [--per-class 10] [--pool 5000] [--n 100] [--steps 300] [--val held-out|carve] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from dho.data.shared import prepare_shared
from dho.evaluate import score
from dho.experiments.fit import FitSettings, fit_config, input_size_for
from dho.experiments.suggest import suggest
from dho.loop import train
from dho.ship.scoring import checkpoint_logits
from dho.training.precompute import cache_teacher
from timing import machine

log = logging.getLogger("bench.suggest")


def _tree(folder: Path, images: list[Path], val: list[Path] | None = None) -> Path:
    """A class-folder tree of links to ``images`` (each under its CIFAR-10 class folder), made anew;
    with ``val``, ``train/`` and ``val/`` trees. Every labeled set of a seed is laid out at one path,
    so its runs share one teacher store."""
    shutil.rmtree(folder, ignore_errors=True)
    for split, files in ((("train", images), ("val", val)) if val is not None else (("", images),)):
        for image in files:
            link = folder / split / image.parent.name / image.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(image)
    return folder


def _pool_file(path: Path, images: list[Path]) -> str:
    path.write_text("".join(f"{p}\n" for p in images))
    return str(path)


def _fit_dho_f(labeled: Path, pool: str, run: Path, store: Path, test: Path, seed: int, steps: int) -> float:
    """DHO-F as ``dho fit`` trains it; its mixed accuracy on ``test``."""
    scores_file = run / "test.json"
    if scores_file.is_file():
        return float(json.loads(scores_file.read_text())["mixed"])
    settings = FitSettings(seed=seed, steps=steps)
    cfg = fit_config(labeled, pool, run, input_size_for(labeled), False, settings).override(
        {"loss.method": "dho", "teacher.adapter": "tip-f", "teacher.cache": str(store), "out": str(run)})
    cache_teacher(cfg, store, dtype="float32")
    train(cfg, overwrite=True)
    logits, _, student = checkpoint_logits(run / "checkpoint", "test", str(test))
    scores = score(logits, student.alpha, student.beta)
    scores_file.write_text(json.dumps(scores))
    return float(scores["mixed"])


def run_seed(root: Path, test: Path, out: Path, seed: int, per_class: int, pool_size: int, n: int, steps: int,
             held_out: bool) -> dict:
    rng = random.Random(seed)
    by_class = {c.name: sorted(c.iterdir()) for c in sorted((root / "train").iterdir())}
    labeled, rest = [], []
    val: list[Path] | None = [] if held_out else None
    for files in by_class.values():
        files = files[:]
        rng.shuffle(files)
        if val is not None:
            k = max(1, round(FitSettings.val_fraction * per_class))
            val += files[:k]
            files = files[k:]
            rest += files[per_class - k:]
            labeled += files[:per_class - k]
        else:
            labeled += files[:per_class]
            rest += files[per_class:]
    rng.shuffle(rest)
    pool = rest[:pool_size]
    here = out / f"seed{seed}"
    here.mkdir(parents=True, exist_ok=True)
    store = here / "teacher_store"
    started = time.time()
    base_acc = _fit_dho_f(_tree(here / "labeled", labeled, val), _pool_file(here / "base-pool.txt", pool),
                          here / "base" / "run", store, test, seed, steps)
    log.info("seed %d: base DHO-F (%d labeled) %.2f%% on test", seed, len(labeled), 100 * base_acc)
    picks = {"suggest": [Path(s.path) for s in suggest(here / "base" / "run", here / "base-pool.txt", n, here / "picks")],
             "random": rng.sample(pool, n)}
    row: dict = {"seed": seed, "labeled": len(labeled), "val": len(val) if val is not None else "carved", "pool": len(pool),
                 "n": n, "base": base_acc}
    for arm, chosen in picks.items():
        taken = set(chosen)
        acc = _fit_dho_f(_tree(here / "labeled", labeled + chosen, val),
                         _pool_file(here / f"{arm}-pool.txt", [p for p in pool if p not in taken]),
                         here / arm / "run", store, test, seed, steps)
        counts = Counter(image.parent.name for image in chosen)
        row[arm] = acc
        row[f"{arm}_classes"] = {"present": len(counts), "min": min(counts.values()), "max": max(counts.values())}
        log.info("seed %d: + %d %s labels: %.2f%% on test (per class %d-%d)", seed, n, arm, 100 * acc,
                 min(counts.values()), max(counts.values()))
    row["wall_time_s"] = round(time.time() - started, 1)
    return row


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--pool", type=int, default=5000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--steps", type=int, default=FitSettings.steps)
    parser.add_argument("--val", choices=("held-out", "carve"), default="held-out",
                        help="validation: a fifth of the base labels for every student, or carved by each fit")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dho-bench-suggest"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = prepare_shared("cifar10")
    test = _tree(args.out / "test", [f for c in sorted((root / "test").iterdir())
                                     for f in sorted(c.iterdir())[: args.test_per_class]])
    rows = [run_seed(root, test, args.out, seed, args.per_class, args.pool, args.n, args.steps, args.val == "held-out")
            for seed in args.seeds]
    gains = [r["suggest"] - r["random"] for r in rows]
    summary = {"machine": machine(), "rows": rows, "base": _mean_std([r["base"] for r in rows]),
               "suggest": _mean_std([r["suggest"] for r in rows]), "random": _mean_std([r["random"] for r in rows]),
               "suggest_minus_random": _mean_std(gains), "suggest_wins": sum(g > 0 for g in gains)}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"{machine()}\nCIFAR-10, {args.per_class}/class labeled + {args.n} more, pool {args.pool}, validation {args.val}, "
          f"test {10 * args.test_per_class} images, seeds {args.seeds} (test %, mean +- std)")
    print(f"  base (no new labels)  {summary['base']}")
    print(f"  + {args.n} suggested       {summary['suggest']}")
    print(f"  + {args.n} random          {summary['random']}")
    print(f"  suggested - random    {summary['suggest_minus_random']} (suggested ahead on {summary['suggest_wins']} "
          f"of {len(rows)} seeds)")


if __name__ == "__main__":
    main()
