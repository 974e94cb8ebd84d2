"""Data: ImageFolder trees, deterministic splits, replayable views, synthetic sets."""

from .datasets import EvalViews, ImageStore, StreamSampler, TrainViews
from .images import decode_image, eval_view
from .manifest import SplitManifest
from .splits import folder_manifest, make_splits
from .synthetic import make_synthetic_folder

__all__ = [
    "EvalViews", "ImageStore", "SplitManifest", "StreamSampler", "TrainViews",
    "decode_image", "eval_view", "folder_manifest", "make_splits", "make_synthetic_folder",
]
