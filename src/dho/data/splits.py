"""Labeled / unlabeled / validation / test splits, deterministic per seed, saved as JSON manifests."""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from pathlib import Path
from typing import cast

from .folders import list_classes, scan_folder
from .manifest import SPLITS, Item, SplitManifest

__all__ = ["SPLITS", "SplitManifest", "folder_manifest", "make_splits", "splits_for"]

log = logging.getLogger(__name__)

def _shuffled(items: list[Path], seed: int, tag: str) -> list[Path]:
    out = list(items)
    random.Random(f"{seed}|{tag}").shuffle(out)
    return out


def _carve(files: dict[str, list[Path]], fraction: float, seed: int, tag: str) -> tuple[dict, dict]:
    """Split each class into (kept, carved) with round(n * fraction) carved, at least 1 if n > 1."""
    kept, carved = {}, {}
    for name, paths in files.items():
        order = _shuffled(paths, seed, f"{tag}|{name}")
        n = min(len(order) - 1, max(1, round(len(order) * fraction))) if len(order) > 1 and fraction > 0 else 0
        carved[name], kept[name] = sorted(order[:n]), sorted(order[n:])
    return kept, carved


def _small_classes(pool: dict[str, list[Path]], shots: int | None, fraction: float | None, policy: str,
                   where: Path) -> list[str]:
    """Classes with fewer training images than the labeled count; an error unless ``policy`` says
    what to do: ``drop`` returns them (to leave the task), ``take_all`` labels all they have."""
    small = []
    for name, paths in pool.items():
        # shots None: fraction is the labeled share (DataConfig requires one of them)
        k = shots if shots is not None else max(1, round(len(paths) * float(cast(float, fraction))))
        if len(paths) < k:
            small.append((name, len(paths), k))
    if not small:
        return []
    (name, n, k), rest = small[0], [repr(c) for c, _, _ in small[1:]]
    first = f"class {name!r} has no training images in {where}" if n == 0 else \
        f"class {name!r} has {n} training images, fewer than shots={k}"
    more = f" (so do {', '.join(rest[:5])}{', ...' if len(rest) > 5 else ''})" if rest else ""
    if policy == "error":
        raise ValueError(f"{first}{more}; set data.small_classes=drop or take_all to train anyway")
    if policy == "drop" and len(small) == len(pool):
        raise ValueError(f"no class would be left: {first}{more}")
    if policy == "take_all":
        log.warning("%s%s: labeling all of them (data.small_classes=take_all)", first, more)
        return []
    log.warning("%s%s: leaving %s out of the task (data.small_classes=drop)", first, more,
                "it" if not rest else f"these {len(small)} classes")
    return [c for c, _, _ in small]


def make_splits(
    root: str | Path, *, shots: int | None = 16, fraction: float | None = None, seed: int = 1,
    val_fraction: float = 0.1, test_fraction: float = 0.2, max_unlabeled: int | None = None,
    small_classes: str = "error", exclude: Collection[str] = (),
) -> SplitManifest:
    """Split an ImageFolder tree.

    ``root`` holds train/ (and optionally val/, test/), or directly the class folders, in which
    case test (``test_fraction``) and validation are carved per class. A missing val/ is carved
    from the training images (``val_fraction``) before the labeled subset is drawn, so selection
    never sees test images. Labeled = ``shots`` per class (or ``fraction`` of each class),
    unlabeled = the rest of the training pool, or a class-balanced random ``max_unlabeled`` of it.
    A class with fewer training images than that is an error unless ``small_classes`` is ``drop``
    (the class leaves the task) or ``take_all`` (all its images are labeled). ``exclude`` lists
    files (relative to ``root``) to leave out, e.g. undecodable ones.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = list_classes(train_dir)
    skip = {Path(root, p).resolve() for p in exclude}

    def scan(folder: Path) -> dict[str, list[Path]]:
        found = scan_folder(folder, classes)
        return {c: [p for p in paths if p.resolve() not in skip] for c, paths in found.items()} if skip else found

    pool = scan(train_dir)
    info: dict = {"seed": seed, "shots": shots, "fraction": fraction}

    if (root / "test").is_dir() and train_dir != root:
        test, info["test_source"] = scan(root / "test"), "test/"
    else:
        pool, test = _carve(pool, test_fraction, seed, "test")
        info["test_source"] = f"carved {test_fraction:g} per class from {train_dir.name}/"
    if (root / "val").is_dir() and train_dir != root:
        val, info["val_source"] = scan(root / "val"), "val/"
    elif val_fraction > 0:
        pool, val = _carve(pool, val_fraction, seed, "val")
        info["val_source"] = f"carved {val_fraction:g} per class from {train_dir.name}/"
    else:
        val, info["val_source"] = {c: [] for c in classes}, "none"

    dropped = _small_classes(pool, shots, fraction, small_classes, train_dir)
    if dropped:
        classes = [c for c in classes if c not in dropped]
        pool, val, test = ({c: files[c] for c in classes} for files in (pool, val, test))
        info["dropped_classes"] = dropped
    labeled, unlabeled = _draw_labeled(pool, shots, fraction, max_unlabeled, seed)
    if max_unlabeled is not None:
        info["max_unlabeled"] = max_unlabeled

    def items(files: dict[str, list[Path]]) -> list[Item]:
        return [(p.relative_to(root).as_posix(), classes.index(c)) for c in classes for p in files[c]]

    manifest = SplitManifest(str(root.resolve()), classes, items(labeled), items(unlabeled), items(val), items(test), info)
    log.info("split %s: %s", root, manifest.summary())
    return manifest


def _draw_labeled(pool: dict[str, list[Path]], shots: int | None, fraction: float | None, max_unlabeled: int | None,
                  seed: int) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Labeled = ``shots`` (or ``fraction``) of each class's pool, drawn by seed; unlabeled = the rest,
    or a class-balanced ``max_unlabeled`` of it."""
    labeled, unlabeled = {}, {}
    for name, paths in pool.items():
        k = min(len(paths), shots if shots is not None else max(1, round(len(paths) * float(cast(float, fraction)))))
        order = _shuffled(paths, seed, f"shots|{name}")
        labeled[name], unlabeled[name] = sorted(order[:k]), sorted(order[k:])
    if max_unlabeled is not None:
        total = sum(len(v) for v in unlabeled.values())
        keep = min(1.0, max_unlabeled / max(1, total))
        unlabeled = {c: sorted(_shuffled(v, seed, f"unlabeled|{c}")[:round(len(v) * keep)]) for c, v in unlabeled.items()}
    return labeled, unlabeled


def folder_manifest(root: str | Path, classes: list[str], folders: list[str] | None = None) -> SplitManifest:
    """Every image of an ImageFolder tree as the ``test`` split, labeled by ``classes`` (a model's
    class list; the folder may hold a subset of them, never a class the model does not know).
    ``folders`` names each class's sub-folder when it is not the class name (ImageNet's WordNet ids)."""
    root = Path(root)
    folders = list(classes) if folders is None else list(folders)
    if len(folders) != len(classes):
        raise ValueError(f"{len(folders)} folder names for {len(classes)} classes")
    files = scan_folder(root, folders)
    items = [(p.relative_to(root).as_posix(), i) for i, c in enumerate(folders) for p in files[c]]
    if not items:
        raise ValueError(f"no images found under {root}")
    return SplitManifest(str(root.resolve()), list(classes), [], [], [], items, {"test_source": str(root)})


def splits_for(data) -> SplitManifest:
    """The splits a :class:`dho.config.DataConfig` describes: a benchmark's protocol
    (:func:`dho.data.protocols.benchmark_manifest`) or an ImageFolder tree's split. With ``skip_bad`` every image is
    checked first (:func:`dho.data.audit.bad_files`) and the undecodable ones are left out; the
    manifest's ``info["bad_files"]`` lists them."""
    if data.format != "folder":
        from .protocols import benchmark_manifest

        return benchmark_manifest(data)
    bad = []
    if data.skip_bad:
        from .audit import bad_files

        bad = bad_files(data.root)
        if bad:
            log.warning("leaving out %d image(s) that cannot be decoded (data.skip_bad), e.g. %s: %s",
                        len(bad), bad[0]["path"], bad[0]["error"])
    manifest = make_splits(data.root, shots=data.shots, fraction=data.fraction, seed=data.split_seed,
                           val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                           max_unlabeled=data.max_unlabeled, small_classes=data.small_classes,
                           exclude=[b["path"] for b in bad])
    if bad:
        manifest.info["bad_files"] = bad
    return manifest
