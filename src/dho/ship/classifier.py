"""The inference API: a trained student, loaded once, predicting labels and scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointMeta, load_metadata, load_student
from ..students import DualHeadStudent, Prediction

__all__ = ["DHOClassifier"]


class DHOClassifier:
    """A trained DHO student for inference.

    >>> clf = DHOClassifier.from_pretrained("runs/quick/checkpoint")
    >>> pred = clf.predict(["cat.jpg", "dog.png"], topk=2)
    >>> pred.labels, pred.scores            # class names, mixed probabilities

    ``predict`` takes file paths, PIL images, numpy arrays ([H, W, 3] RGB, uint8 or [0, 1] floats;
    one, a list, or [N, H, W, 3]) or uint8/[0, 1] tensors at the input size ([N, 3, H, W] or
    [3, H, W]); all but tensors are resized and centre-cropped to the input size. The mix uses
    the checkpoint's tuned alpha/beta unless given. ``from_pretrained`` takes a run directory, its
    checkpoint directory or its ``model.safetensors``.
    """

    def __init__(self, student: DualHeadStudent, metadata: CheckpointMeta | None = None) -> None:
        self.student = student.eval()
        self.metadata: CheckpointMeta = metadata or CheckpointMeta()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> DHOClassifier:
        """A run directory, its checkpoint directory, or its ``model.safetensors`` (with ``model.json`` beside it)."""
        return cls(load_student(path, device=device), load_metadata(path))

    @property
    def classes(self) -> list[str]:
        return list(self.student.classnames)

    @property
    def alpha(self) -> float:
        return self.student.alpha

    @property
    def beta(self) -> float:
        return self.student.beta

    @property
    def input_size(self) -> int:
        return self.student.preprocess.size

    def predict(self, images: Any, topk: int | None = None, *, alpha: float | None = None, beta: float | None = None,
                batch_size: int = 256) -> Prediction:
        """Labels, indices, scores and the full mixed probabilities [N, C] of ``images``."""
        if topk is not None and not 1 <= topk <= len(self.classes):
            raise ValueError(f"topk={topk} must be between 1 and the {len(self.classes)} classes")
        return self.student.predict(images, alpha=alpha, beta=beta, topk=topk, batch_size=batch_size)

    __call__ = predict

    def __repr__(self) -> str:
        return (f"DHOClassifier({self.student.spec.backbone}, {len(self.classes)} classes, "
                f"{self.input_size} px, alpha={self.alpha:.2f}, beta={self.beta:.2f})")
