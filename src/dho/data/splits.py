"""Labeled / unlabeled / validation / test splits, deterministic per seed, saved as JSON manifests."""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..coerce import ConfigError
from .benchmarks import Pools
from .folders import check_not_split_layout, list_classes, scan_folder, unlabeled_images
from .manifest import SPLITS, UNLABELED, Item, SplitInfo, SplitManifest
from .protocols import benchmark_manifest, carve, protocol_manifest

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = ["SPLITS", "SplitManifest", "folder_manifest", "folder_pools", "make_splits", "splits_for"]

log = logging.getLogger(__name__)


def make_splits(
    root: str | Path, *, shots: int | None = 16, fraction: float | None = None, seed: int = 1,
    val_fraction: float = 0.1, test_fraction: float = 0.0, max_unlabeled: int | None = None,
    small_classes: str = "error", exclude: Collection[str] = (),
) -> SplitManifest:
    """Split an ImageFolder tree (the keyword arguments are :class:`dho.config.DataConfig`'s).

    ``root`` holds train/ (and optionally val/, test/), or directly the class folders; without
    test/, ``test_fraction`` of each class is carved as test (0: no test split), and without val/
    validation is carved. A missing val/ is carved
    from the training images (``val_fraction``) before the labeled subset is drawn, so selection
    never sees test images. Labeled = ``shots`` per class (or ``fraction`` of each class),
    unlabeled = the rest of the training pool, or a class-balanced random ``max_unlabeled`` of it.
    A class with fewer training images than that is an error unless ``small_classes`` is ``drop``
    (the class leaves the task) or ``take_all`` (all its images are labeled). ``exclude`` lists
    files (relative to ``root``) to leave out, e.g. undecodable ones.
    """
    from ..config import DataConfig

    data = DataConfig(root=str(root), shots=shots, fraction=fraction, split_seed=seed, val_fraction=val_fraction,
                      test_fraction=test_fraction, max_unlabeled=max_unlabeled,
                      small_classes=cast(Any, small_classes))
    return protocol_manifest(folder_pools(root, seed, test_fraction, exclude), data)


def folder_pools(root: str | Path, seed: int, test_fraction: float, exclude: Collection[str] = ()) -> Pools:
    """An ImageFolder tree as train / val / test pools for the split engine: train/, val/ and test/
    when they exist; without test/, ``test_fraction`` of each class carved by ``seed``. Draws are
    keyed by class name, so a class's images do not move when other classes come or go."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = list_classes(train_dir)
    check_not_split_layout(train_dir, classes)
    skip = {Path(root, p).resolve() for p in exclude}

    def scan(folder: Path) -> list[list[Item]]:
        found = scan_folder(folder, classes)
        return [[(p.relative_to(root).as_posix(), c) for p in found[name] if not skip or p.resolve() not in skip]
                for c, name in enumerate(classes)]

    train = scan(train_dir)
    info = SplitInfo(train_source=f"{train_dir.name}/")
    if (root / "test").is_dir() and train_dir != root:
        test, info["test_source"] = [it for g in scan(root / "test") for it in g], "test/"
    elif test_fraction > 0:
        train, test = carve(train, test_fraction, seed, "test", classes)
        info["test_source"] = f"carved {test_fraction:g} per class from {train_dir.name}/"
    else:
        test, info["test_source"] = [], "none (no test/ folder)"
    val: list[Item] = []
    if (root / "val").is_dir() and train_dir != root:
        val, info["val_source"] = [it for g in scan(root / "val") for it in g], "val/"
    return Pools(root, classes, [it for g in train for it in g], val, test, info=info, draw_keys=classes)


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


def splits_for(data: DataConfig) -> SplitManifest:
    """The splits a :class:`dho.config.DataConfig` describes: a benchmark's protocol
    (:func:`dho.data.protocols.benchmark_manifest`) or an ImageFolder tree's split. With ``skip_bad`` every image is
    checked first (:func:`dho.data.audit.bad_files`) and the undecodable ones are left out; the
    manifest's ``info["bad_files"]`` lists them."""
    if not data.root:
        raise ConfigError("data.root is not set: name the dataset (a folder of class folders: data.root=DIR)")
    if data.format != "folder":
        return _without_bad(benchmark_manifest(data)) if data.skip_bad else benchmark_manifest(data)
    bad = []
    if data.skip_bad:
        from .audit import bad_files

        bad = bad_files(data.root)
        _note_bad(bad)
    pools = folder_pools(data.root, data.split_seed, data.test_fraction, [b["path"] for b in bad])
    if data.unlabeled is None:
        manifest = protocol_manifest(pools, data)
    else:  # the cap applies to the whole stream, the folder's own leftovers and the pool alike
        manifest = _with_unlabeled(protocol_manifest(pools, replace(data, max_unlabeled=None)), data)
    if bad:
        manifest.info["bad_files"] = bad
    return manifest


def _note_bad(bad: list[dict]) -> None:
    if bad:
        log.warning("leaving out %d image(s) that cannot be decoded (data.skip_bad), e.g. %s: %s",
                    len(bad), bad[0]["path"], bad[0]["error"])


def _without_bad(manifest: SplitManifest) -> SplitManifest:
    """A benchmark's split without the images its lists name that cannot be decoded (data.skip_bad)."""
    from .audit import bad_in_manifest

    bad = bad_in_manifest(manifest)
    if not bad:
        return manifest
    _note_bad(bad)
    gone = {b["path"] for b in bad}

    def keep(key: str) -> list[Item]:
        return [item for item in manifest.split(key) if item[0] not in gone]

    return replace(manifest, labeled=keep("labeled"), unlabeled=keep("unlabeled"), val=keep("val"), test=keep("test"),
                   info={**manifest.info, "bad_files": bad})


def _with_unlabeled(manifest: SplitManifest, data: DataConfig) -> SplitManifest:
    """The manifest with ``data.unlabeled``'s images added to its unlabeled stream (class unknown:
    :data:`UNLABELED`), under the root as relative paths, elsewhere as absolute ones; with
    ``max_unlabeled``, a seeded random subset of the whole stream."""
    assert data.unlabeled is not None
    root = Path(manifest.root)
    taken = {manifest.path(rel).resolve() for split in SPLITS for rel, _ in manifest.split(split)}
    pool = [p for p in unlabeled_images(data.unlabeled) if p not in taken]  # not the very files of another split
    items = [(p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p), UNLABELED) for p in pool]
    stream = manifest.unlabeled + items
    if data.max_unlabeled is not None and len(stream) > data.max_unlabeled:
        keep = random.Random(f"unlabeled|{data.split_seed}").sample(range(len(stream)), data.max_unlabeled)
        stream = [stream[i] for i in sorted(keep)]
        manifest.info["max_unlabeled"] = data.max_unlabeled
    manifest.unlabeled = stream
    manifest.info["unlabeled_source"] = f"{len(items)} images of {data.unlabeled}"
    log.info("unlabeled stream: %d images (%d from %s)", len(stream), len(items), data.unlabeled)
    return manifest
