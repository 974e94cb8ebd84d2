import json

import pytest

from dho.data import SplitManifest, make_splits, make_synthetic_folder


def _paths(items):
    return {p for p, _ in items}


def test_splits_are_deterministic_and_disjoint(synth_root):
    a = make_splits(synth_root, shots=3, seed=1)
    b = make_splits(synth_root, shots=3, seed=1)
    c = make_splits(synth_root, shots=3, seed=2)
    assert a == b
    assert _paths(a.labeled) != _paths(c.labeled)
    groups = [_paths(a.labeled), _paths(a.unlabeled), _paths(a.val), _paths(a.test)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not groups[i] & groups[j]
    assert len(a.labeled) == 3 * 4
    # every training image is labeled, unlabeled or validation; test comes from test/
    assert len(a.labeled) + len(a.unlabeled) + len(a.val) == 24 * 4
    assert all(p.startswith("test/") for p in _paths(a.test))
    assert a.info["val_source"].startswith("carved") and a.info["test_source"] == "test/"


def test_labels_follow_sorted_class_folders(synth_root):
    m = make_splits(synth_root, shots=2)
    assert m.classes == sorted(m.classes)
    for path, label in m.labeled + m.test:
        assert path.split("/")[1] == m.classes[label]


def test_fraction_and_shot_counts(synth_root):
    m = make_splits(synth_root, shots=None, fraction=0.25, val_fraction=0.0)
    counts = [sum(1 for _, y in m.labeled if y == k) for k in range(4)]
    assert counts == [6, 6, 6, 6] and m.val == [] and m.info["val_source"] == "none"


def test_too_few_images_is_an_error(synth_root):
    with pytest.raises(ValueError, match="fewer than shots=50"):
        make_splits(synth_root, shots=50)


def test_single_folder_tree_is_split_by_ratio(tmp_path):
    root = make_synthetic_folder(tmp_path / "flat", classes=("a", "b"), per_class=20)
    m = make_splits(root, shots=2, val_fraction=0.1, test_fraction=0.25)
    assert len(m.test) == 10 and len(m.val) == 4 and len(m.labeled) == 4 and len(m.unlabeled) == 22
    assert m.info["test_source"].startswith("carved")


def test_manifest_json_round_trip(synth_root, tmp_path):
    m = make_splits(synth_root, shots=2)
    m.save(tmp_path / "splits.json")
    json.loads((tmp_path / "splits.json").read_text())  # plain JSON, no pickle
    assert SplitManifest.load(tmp_path / "splits.json") == m


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_splits(tmp_path / "nothing")
