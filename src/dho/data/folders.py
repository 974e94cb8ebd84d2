"""ImageFolder trees: ``root/<class>/*.jpg``, optionally under train/, val/ and test/."""

from __future__ import annotations

from pathlib import Path

from .images import IMAGE_EXTENSIONS

__all__ = ["list_classes", "scan_folder"]


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
