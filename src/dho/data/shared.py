"""Datasets shipped as archives beside a checkout (``shared/data/<name>.tar.gz``), unpacked once
into the cache directory: CIFAR-10 (:mod:`dho.data.cifar`), Caltech101 in CoOp's layout,
Imagenette in ImageNet's layout. Each is found through ``$DHO_<NAME>_ARCHIVE`` first."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path

from ..files import cache_dir as default_cache_dir

__all__ = ["SHARED", "find_shared_archive", "prepare_shared"]

log = logging.getLogger(__name__)

# name -> (archive file, the folder it unpacks to, a file or folder that marks it complete)
SHARED = {
    "cifar10": ("cifar10-jpg.tar.gz", "cifar10", "test"),
    "caltech101": ("caltech101.tar.gz", "caltech-101", "split_zhou_Caltech101.json"),
    "imagenette": ("imagenette-160.tar.gz", "imagenette", "subsets"),
}


def find_shared_archive(name: str) -> Path | None:
    """``$DHO_<NAME>_ARCHIVE``, else ``shared/data/<archive>`` beside or inside the working
    directory or the checkout; None when there is none."""
    archive = SHARED[name][0]
    variable = f"DHO_{name.upper()}_ARCHIVE"
    if os.environ.get(variable):
        return Path(os.environ[variable])
    checkout = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), Path.cwd().parent, checkout, checkout.parent):
        candidate = base / "shared" / "data" / archive
        if candidate.is_file():
            return candidate
    return None


def prepare_shared(name: str, cache_dir: str | Path | None = None) -> Path:
    """The unpacked dataset's directory in the cache (``<cache>/<folder>``), unpacking its archive
    the first time (into a temporary folder, renamed when complete)."""
    archive_name, folder, marker = SHARED[name]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / folder
    if (root / marker).exists():
        return root
    archive = find_shared_archive(name)
    if archive is None or not archive.is_file():
        raise FileNotFoundError(f"{name}: no {archive_name} found (shared/data/ beside the checkout, or "
                                f"DHO_{name.upper()}_ARCHIVE=FILE)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{folder}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("unpacking %s into %s", archive, cache)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    if not (tmp / folder / marker).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{archive} does not hold {folder}/{marker}")
    shutil.rmtree(root, ignore_errors=True)
    (tmp / folder).rename(root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root
