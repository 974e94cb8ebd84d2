"""Prediction on image files, folders and globs with a saved student."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..data.images import IMAGE_EXTENSIONS
from ..students import DualHeadStudent

__all__ = ["expand_paths", "predict_files"]


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> sorted unique files."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no image matches {pattern!r}")
            found.extend(matches)
    return list(dict.fromkeys(found))


def predict_files(student: DualHeadStudent, paths: Sequence[Path], *, topk: int = 1, batch_size: int = 64,
                  alpha: float | None = None, beta: float | None = None) -> Iterator[dict]:
    """One record per file: path, top-k labels and their mixed probabilities."""
    topk = min(topk, len(student.classnames))
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        pred = student.predict(chunk, alpha=alpha, beta=beta, topk=topk)
        scores = pred.probs.gather(1, pred.indices)
        for path, labels, probs in zip(chunk, pred.labels, scores.tolist()):
            yield {"path": str(path), "labels": labels, "scores": [round(p, 6) for p in probs]}
