"""The split-overlap check (`data.duplicates`) against hashing every file whole, side by side.

The check groups files by size, then by their first bytes, and hashes whole only the files that
could equal a file of another split. The baseline reads and hashes every file of every split.
Both must report the same lines. Cases: the CIFAR-10 demo split (small JPEGs, read whole either
way) and a folder of larger JPEGs (CIFAR images re-encoded at 384 px, made here on first use).
A third column is the staged check again with the digests an earlier check kept (a later run on
the same files: only stat() and a lookup per candidate file). ``--cold`` (root only) empties the
page cache before every call, as on a first read from disk.

    python bench/overlaps.py [--split runs/.../splits.json] [--rounds 3] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

from dho.data.decode import content_digest
from dho.data.duplicates import DigestCache, overlap_lines, split_overlaps
from dho.data.manifest import SPLITS, SplitManifest
from dho.data.splits import make_splits
from timing import machine, report, side_by_side


def hash_everything(manifest: SplitManifest) -> list[str]:
    """The baseline: every file read and hashed whole."""
    by_path, by_hash = defaultdict(set), defaultdict(set)
    for split in SPLITS:
        for rel, _ in manifest.split(split):
            path = manifest.path(rel)
            by_path[os.path.realpath(path)].add((split, rel))
            by_hash[content_digest(path.read_bytes())].add((split, rel))
    return overlap_lines(by_path, by_hash)


def large_jpegs(cifar: Path, out: Path, n: int = 4000, size: int = 384) -> Path:
    from PIL import Image

    if not (out / "test").is_dir():
        files = sorted((cifar / "train" / "cat").iterdir())[:n]
        for i, f in enumerate(files):
            target = out / ("train" if i < 3 * n // 4 else "test") / "cat" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(f).resize((size, size), Image.BICUBIC).save(target, quality=95)
    return out


def cold(candidates: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each candidate, the page cache emptied before every call."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default="~/.cache/dho/cifar10", help="CIFAR-10 as JPEG folders (`dho demo` makes it)")
    parser.add_argument("--split", help="a splits.json to check (default: the demo's CIFAR split, made here)")
    parser.add_argument("--large", default="/tmp/dho-bench-large-jpegs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="empty the page cache before every call (root)")
    args = parser.parse_args()
    cifar = Path(args.cifar).expanduser()
    cases = {
        "CIFAR-10 split (JPEGs of ~1 KB)": SplitManifest.load(args.split) if args.split
        else make_splits(cifar, shots=16, val_fraction=0.02, max_unlabeled=5000),
        "4,000 JPEGs at 384 px (~21 KB)": make_splits(large_jpegs(cifar, Path(args.large)), shots=16, val_fraction=0.1),
    }
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, manifest) in enumerate(cases.items()):
            kept = DigestCache(Path(tmp) / f"digests-{i}.sqlite")
            assert sorted(split_overlaps(manifest, kept)) == sorted(hash_everything(manifest)), name
            kept.save()

            def cached(manifest=manifest, i=i) -> list[str]:
                digests = DigestCache(Path(tmp) / f"digests-{i}.sqlite")
                try:
                    return split_overlaps(manifest, digests)
                finally:
                    digests.save()

            assert sorted(cached()) == sorted(hash_everything(manifest)), name
            candidates = {"staged check": partial(split_overlaps, manifest), "hash every file": partial(hash_everything, manifest),
                          "staged, digests kept": cached}
            medians = cold(candidates, args.rounds) if args.cold else side_by_side(candidates, rounds=args.rounds)
            n = sum(len(manifest.split(s)) for s in SPLITS)
            report(f"{name}: {n} files, same lines", medians, {
                "hash every file / staged": ("hash every file", "staged check"),
                "staged / staged with kept digests": ("staged check", "staged, digests kept")})


if __name__ == "__main__":
    main()
