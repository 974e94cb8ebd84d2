"""ImageFolder trees: ``root/<class>/*.jpg``, optionally under train/, val/ and test/; and pools
of unlabeled images as users keep them (a folder, a list file, a glob)."""

from __future__ import annotations

import glob
from pathlib import Path

from .images import IMAGE_EXTENSIONS

__all__ = ["check_not_split_layout", "list_classes", "scan_folder", "unlabeled_images"]

UNLABELED_NAMES = ("unlabeled", "unlabelled")


def list_classes(folder: Path) -> list[str]:
    """Class names = the sub-folder names, sorted (torchvision ImageFolder order)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    return classes


def scan_folder(folder: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Map each class to its sorted image files. Sub-folders unknown to ``classes`` are errors."""
    found = list_classes(folder)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{folder} has classes not in the training set: {', '.join(unknown[:5])}")
    files: dict[str, list[Path]] = {}
    for name in classes:
        directory = folder / name
        files[name] = sorted(
            p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ) if directory.is_dir() else []
    return files


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def unlabeled_images(spec: str | Path) -> list[Path]:
    """The images of an unlabeled pool, resolved and sorted: a folder (searched recursively; its
    sub-folder names are not labels), a text file of image paths (one a line; relative paths are
    relative to the file; blank lines and ``#`` comments skipped), or a glob (``**`` recursive)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    elif path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        listed = [Path(ln).expanduser() for ln in lines if ln and not ln.startswith("#")]
        found = [p if p.is_absolute() else path.parent / p for p in listed]
        missing = [p for p in found if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(found)} images {path} lists do not exist (e.g. {missing[0]})")
    elif path.is_file():
        found = [path]
    elif any(c in text for c in "*?["):
        found = [Path(p) for p in glob.glob(str(Path(text).expanduser()), recursive=True) if _is_image(Path(p))]
    else:
        raise FileNotFoundError(f"data.unlabeled={text!r}: no such folder, list file or glob")
    images = sorted({p.resolve() for p in found})
    if not images:
        raise ValueError(f"data.unlabeled={text!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def check_not_split_layout(root: Path, classes: list[str]) -> None:
    """A root whose "classes" are ``labeled/`` and ``unlabeled/`` is a data layout, not a 2-class task."""
    if any(c.lower() in UNLABELED_NAMES for c in classes):
        other = [c for c in classes if c.lower() not in UNLABELED_NAMES]
        name = next(c for c in classes if c.lower() in UNLABELED_NAMES)
        labeled = root / other[0] if len(other) == 1 else root
        raise ValueError(f"{root} holds {name}/ beside its class folders, which would make it a class: use "
                         f"data.root={labeled} data.unlabeled={root / name} (dho fit {labeled} --unlabeled {root / name})")
