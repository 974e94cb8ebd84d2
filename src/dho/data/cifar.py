"""CIFAR-10 as an ImageFolder tree, prepared once into a cache directory.

Sources, in order: an existing cache; a local archive of the JPEG tree (``cifar10/{train,test}/
<class>/*.jpg``, e.g. the project's shared ``cifar10-jpg.tar.gz``); torchvision's download when
the machine is online (written out as PNG files in the same layout).
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

from ..files import cache_dir as default_cache_dir
from .shared import find_shared_archive

__all__ = ["CIFAR10_CLASSES", "find_cifar10_archive", "prepare_cifar10"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE_NAME = "cifar10-jpg.tar.gz"


def find_cifar10_archive() -> Path | None:
    """``$DHO_CIFAR10_ARCHIVE``, else ``shared/data/`` beside or inside the working directory or checkout."""
    return find_shared_archive("cifar10")


def _complete(root: Path) -> bool:
    return all((root / split / c).is_dir() for split in ("train", "test") for c in CIFAR10_CLASSES)


def prepare_cifar10(cache_dir: str | Path | None = None, archive: str | Path | None = None) -> Path:
    """Return the root of a CIFAR-10 ImageFolder tree (train/ and test/), preparing it if needed."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "cifar10"
    if _complete(root):
        return root
    archive = Path(archive) if archive else find_cifar10_archive()
    tmp = cache / ".cifar10.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive is not None:
        if not archive.is_file():
            raise FileNotFoundError(f"CIFAR-10 archive {str(archive)!r} does not exist")
        log.info("unpacking %s into %s", archive, cache)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = tmp / "cifar10"
    else:
        unpacked = _download_with_torchvision(tmp)
    if not _complete(unpacked):
        raise ValueError(f"{archive or 'the download'} does not hold cifar10/{{train,test}}/<class>/ folders")
    shutil.rmtree(root, ignore_errors=True)
    unpacked.rename(root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def _download_with_torchvision(tmp: Path) -> Path:
    from torchvision.datasets import CIFAR10

    log.info("no local CIFAR-10 archive; downloading with torchvision")
    out = tmp / "cifar10"
    for split, train in (("train", True), ("test", False)):
        try:
            data = CIFAR10(str(tmp / "download"), train=train, download=True)
        except Exception as err:  # offline: URLError, socket errors, ...
            raise RuntimeError(
                f"CIFAR-10 not found locally and the download failed ({type(err).__name__}); "
                f"set DHO_CIFAR10_ARCHIVE to a {ARCHIVE_NAME} or pass --data DIR"
            ) from None
        counts = dict.fromkeys(CIFAR10_CLASSES, 0)
        for image, label in data:
            name = CIFAR10_CLASSES[label]
            (out / split / name).mkdir(parents=True, exist_ok=True)
            image.save(out / split / name / f"{counts[name]:04d}.png")
            counts[name] += 1
    return out
