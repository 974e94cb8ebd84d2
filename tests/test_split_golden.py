"""Pinned draws: the labeled / unlabeled / validation / test lists of folder trees and benchmark
protocols, as digests. A change to the split engine that moves a single image fails here; a change
meant to move images updates these digests in the same commit and says so."""

import hashlib
import json

import pytest

from conftest import write_coop_tree, write_imagenet_tree, write_png
from dho.config import DataConfig
from dho.data.splits import splits_for


def digest(manifest) -> str:
    lists = [manifest.classes, manifest.labeled, manifest.unlabeled, manifest.val, manifest.test]
    return hashlib.sha256(json.dumps(lists).encode()).hexdigest()[:16]


def folder_tree(root, with_splits: bool):
    """Five classes of uneven size; with ``with_splits`` a train/ val/ test/ layout."""
    sizes = {"ant": 9, "bee": 12, "cat": 7, "dog": 15, "eel": 10}
    n = 0
    for name, count in sizes.items():
        for i in range(count):
            where = ("train" if i < count - 3 else "val" if i < count - 1 else "test") if with_splits else None
            folder = root / where / name if where else root / name
            write_png(folder / f"{name}{i:02d}.png", n, size=4)
            n += 1
    return root


FOLDER_CASES = {
    "flat-shots2": ({"shots": 2, "test_fraction": 0.2}, "826a7582c97a2cd7"),
    "flat-shots3-seed7": ({"shots": 3, "split_seed": 7, "test_fraction": 0.2}, "b2da322b47b75137"),
    "flat-fraction": ({"shots": None, "fraction": 0.3, "test_fraction": 0.2}, "1d83107c1d3be93f"),
    "flat-cap": ({"shots": 1, "max_unlabeled": 9, "val_fraction": 0.2, "test_fraction": 0.3}, "2fda33c8f0f86b7c"),
    "flat-drop": ({"shots": 6, "small_classes": "drop", "test_fraction": 0.2}, "7acc1346a07e7f18"),
    "splits-shots2": ({"shots": 2, "_tree": "splits"}, "f8ce1dad787ca530"),
}

BENCH_CASES = {
    "coop-shots2": ({"format": "coop", "dataset": "dtd", "shots": 2}, "ca4306ba8f0a04c8"),
    "coop-shots2-coopval": ({"format": "coop", "dataset": "dtd", "shots": 2, "val_shots": "coop", "split_seed": 3},
                            "4149e66c3fac90ac"),
    "coop-coopdraw": ({"format": "coop", "dataset": "dtd", "shots": 4, "shot_draw": "coop", "val_shots": "coop"},
                      "f8ec1a8f2ddd6628"),
    "coop-cap": ({"format": "coop", "dataset": "dtd", "shots": 1, "max_unlabeled": 5}, "451a8d92a7c039fe"),
    "imagenet-shots2": ({"format": "imagenet", "shots": 2}, "bf8a1117638f62fd"),
    "imagenet-coopval": ({"format": "imagenet", "shots": 3, "val_shots": "coop", "split_seed": 2}, "4c3bff3998022cd2"),
    "imagenet-fraction": ({"format": "imagenet", "shots": None, "fraction": 0.3, "low_shot": "per_class"},
                          "676358425c6af88d"),
    "imagenet-authors": ({"format": "imagenet", "shots": None, "fraction": 0.2, "low_shot": "authors",
                          "val_fraction": 0.0}, "fee7a2033d72c121"),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("golden")
    return {"flat": folder_tree(base / "flat", False), "splits": folder_tree(base / "splits", True),
            "coop": write_coop_tree(base / "coop", per_class={"train": 9, "val": 5, "test": 3}),
            "imagenet": write_imagenet_tree(base / "imagenet", per_class={"train": 11, "val": 3})}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_folder_draws_are_pinned(trees, case):
    settings, expected = FOLDER_CASES[case]
    settings = dict(settings)
    tree = settings.pop("_tree", "flat")
    manifest = splits_for(DataConfig(root=str(trees[tree]), **settings))
    assert digest(manifest) == expected


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_benchmark_draws_are_pinned(trees, case):
    settings, expected = BENCH_CASES[case]
    manifest = splits_for(DataConfig(root=str(trees[settings["format"]]), **settings))
    assert digest(manifest) == expected
