"""Tiny fakes shared by the tests: a synthetic ImageFolder tree and a seconds-long run config."""

from __future__ import annotations

import pytest
import torch

from dho.config import RunConfig
from dho.data import make_synthetic_folder

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """train/ (24 per class) and test/ (8 per class) for 4 classes of 32x32 PNGs."""
    return make_synthetic_folder(tmp_path_factory.mktemp("synth"), per_class={"train": 24, "test": 8}, seed=0)


@pytest.fixture
def tiny_cfg(synth_root, tmp_path) -> RunConfig:
    """A DHO run that takes a few seconds: resnet18 at 32 px, synthetic teacher, 6 steps."""
    return RunConfig().override({
        "data.root": str(synth_root), "data.shots": 2, "student.backbone": "resnet18", "student.image_size": 32,
        "optim.epochs": 6, "optim.batch_size": 8, "eval.batch_size": 64, "out": str(tmp_path / "run"), "threads": 2,
    })
