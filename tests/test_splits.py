import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _tree(root, counts, test=2):
    """train/<c>/ with counts[c] files and test/<c>/ with ``test`` each (names only: splits never decode)."""
    for split, per in (("train", counts), ("test", dict.fromkeys(counts, test))):
        for c, n in per.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / c / f"{i:03d}.png").write_bytes(f"{split}{c}{i}".encode())
    return root


def test_small_and_empty_classes_follow_the_chosen_policy(tmp_path):
    root = _tree(tmp_path, {"a": 10, "b": 2, "c": 0})
    with pytest.raises(ValueError, match=r"class 'b' has 2 training images, fewer than shots=3 \(so do 'c'\); set data.small"):
        make_splits(root, shots=3, val_fraction=0)
    dropped = make_splits(root, shots=3, val_fraction=0, small_classes="drop")
    assert dropped.classes == ["a"] and dropped.info["dropped_classes"] == ["b", "c"]
    assert {y for _, y in dropped.labeled + dropped.test} == {0} and len(dropped.test) == 2
    taken = make_splits(root, shots=3, val_fraction=0, small_classes="take_all")
    assert [sum(y == k for _, y in taken.labeled) for k in range(3)] == [3, 2, 0]


def test_excluded_files_never_enter_a_split(tmp_path):
    root = _tree(tmp_path, {"a": 6, "b": 6})
    m = make_splits(root, shots=2, exclude=["train/a/000.png", "test/b/001.png"])
    paths = {p for key in ("labeled", "unlabeled", "val", "test") for p, _ in m.split(key)}
    assert "train/a/000.png" not in paths and "test/b/001.png" not in paths and len(paths) == 6 + 6 + 4 - 2


def test_overlaps_by_path_and_content_are_found(tmp_path, caplog):
    from dho.data.duplicates import check_overlaps

    root = _tree(tmp_path, {"a": 6, "b": 6})
    (root / "train" / "b" / "005.png").write_bytes((root / "test" / "a" / "000.png").read_bytes())
    m = make_splits(root, shots=2, val_fraction=0)
    with pytest.raises(ValueError, match=r"^1 image\(s\) appear in two splits, e.g. .* has the same content as ") as info:
        check_overlaps(m, "error")
    assert "train/b/005.png" in str(info.value) and "test/a/000.png" in str(info.value)
    m.unlabeled.append(m.test[0])  # the very same file in two splits
    assert any("is the same file" in x for x in check_overlaps(m, "warn")) and "appear in two splits" in caplog.text
    assert check_overlaps(m, "off") == []


def test_manifest_load_checks_classes_and_labels(synth_root, tmp_path):
    m = make_splits(synth_root, shots=2)
    data = json.loads(json.dumps(dataclasses.asdict(m)))
    data["labeled"][0][1] = 9
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not an index into its 4 classes"):
        SplitManifest.load(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text(json.dumps(data)[:100])
    with pytest.raises(ValueError, match="not a valid split manifest"):
        SplitManifest.load(tmp_path / "cut.json")


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=4), shots=st.integers(1, 4), seed=st.integers(0, 3),
       val_fraction=st.sampled_from([0.0, 0.2, 0.5]), policy=st.sampled_from(["error", "drop", "take_all"]))
def test_split_properties(tmp_path_factory, counts, shots, seed, val_fraction, policy):
    root = _tree(tmp_path_factory.mktemp("tree"), {f"c{i}": n for i, n in enumerate(counts)}, test=1)
    kw = {"shots": shots, "seed": seed, "val_fraction": val_fraction, "small_classes": policy}
    try:
        m = make_splits(root, **kw)
    except ValueError as err:
        assert policy in ("error", "drop") and ("fewer than shots" in str(err) or "no training images" in str(err))
        return
    assert m == make_splits(root, **kw)  # deterministic
    groups = [{p for p, _ in m.split(k)} for k in ("labeled", "unlabeled", "val", "test")]
    assert sum(map(len, groups)) == len(set().union(*groups))  # disjoint
    kept = m.classes
    assert groups[0] | groups[1] | groups[2] == {f"train/{c}/{i:03d}.png" for c in kept for i in range(counts[int(c[1:])])}
    for label in range(len(kept)):
        labeled = sum(y == label for _, y in m.labeled)
        pool = labeled + sum(y == label for _, y in m.unlabeled)
        assert labeled == (min(shots, pool) if policy == "take_all" else shots)
    for path, y in m.labeled + m.unlabeled + m.val + m.test:
        assert path.split("/")[1] == kept[y]


def test_overlap_check_reads_only_what_could_match_and_misses_nothing(tmp_path):
    """Staged by size, then the first bytes, then the whole file: the same lines as hashing every
    file, including files of one size and one head that differ at the end."""
    import os
    import random

    from dho.data.decode import content_digest
    from dho.data.duplicates import HEAD_BYTES, split_overlaps
    from dho.data.manifest import SPLITS, SplitManifest

    rng = random.Random(0)
    big, small = rng.randbytes(3 * HEAD_BYTES), rng.randbytes(500)
    files = {
        "l0": big, "t0": big,  # large, same content across splits
        "u0": big[:-1] + b"x", "v0": big[:-1] + b"y",  # same size and head, another tail
        "l1": small, "u1": small, "v1": small,  # small, in three splits
        "t1": small[:-1] + b"z",  # same size, differs inside the head
        "l2": rng.randbytes(700), "l3": b"",  # unique; empty
    }
    files["u2"] = files["t2"] = rng.randbytes(700)  # unlabeled and test share one
    files["v2"] = files["t3"] = rng.randbytes(64)  # val and test share one
    for name, data in files.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
    by_split = {"l": "labeled", "u": "unlabeled", "v": "val", "t": "test"}
    rows = {s: [(f"{n}.bin", 0) for n in files if by_split[n[0]] == s] for s in SPLITS}
    m = SplitManifest(str(tmp_path), ["x"], rows["labeled"], rows["unlabeled"], rows["val"], rows["test"], {})
    found = split_overlaps(m)

    brute: dict = {}
    for split in SPLITS:
        for rel, _ in m.split(split):
            brute.setdefault(content_digest((tmp_path / rel).read_bytes()), set()).add((split, rel))
    expected = [f"{a[0]} {a[1]} has the same content as {b[0]} {b[1]}"
                for g in brute.values() if len({s for s, _ in g}) > 1 for a, b in [sorted(g)[:2]]]
    assert sorted(found) == sorted(expected) and len(expected) == 4
    assert not any("u0.bin" in line or "t1.bin" in line for line in found)
    os.chmod(tmp_path / "t0.bin", 0)  # unreadable: left to the decoder, never a crash
    if os.geteuid() != 0:
        assert sum("l0.bin" in line for line in split_overlaps(m)) == 0



def test_overlap_digests_are_kept_by_file_identity(tmp_path, monkeypatch):
    """A second check of the same files reads none of them (digests kept in SQLite by path, inode,
    size, mtime, ctime); a file rewritten since is read again and its new content counts; a cache
    that cannot be opened changes nothing but the reading."""
    import random

    import dho.data.duplicates as dup
    from dho.data.manifest import SplitManifest

    rng = random.Random(1)
    same, other = rng.randbytes(3 * dup.HEAD_BYTES), rng.randbytes(3 * dup.HEAD_BYTES)
    data = tmp_path / "data"
    data.mkdir()
    for name, content in {"l0": same, "t0": same, "u0": other, "v0": other[:-1] + b"x", "l1": b"s" * 100, "t1": b"s" * 100}.items():
        (data / f"{name}.bin").write_bytes(content)
    by_split = {"l": [], "u": [], "v": [], "t": []}
    for f in sorted(data.iterdir()):
        by_split[f.name[0]].append((f.name, 0))
    m = SplitManifest(str(data), ["x"], by_split["l"], by_split["u"], by_split["v"], by_split["t"], {})
    reads: list[str] = []
    for kind in ("_head_digest", "_whole_digest"):
        real = getattr(dup, kind)
        monkeypatch.setattr(dup, kind, lambda p, real=real, kind=kind: reads.append(f"{kind}:{p.name}") or real(p))

    def check(cache_file):
        digests = dup.DigestCache(cache_file)
        try:
            return sorted(dup.split_overlaps(m, digests))
        finally:
            digests.save()

    first = check(tmp_path / "digests.sqlite")
    assert len(first) == 2 and reads  # l0 = t0, l1 = t1; u0 / v0 differ at the end
    reads.clear()
    assert check(tmp_path / "digests.sqlite") == first and reads == []
    (data / "v0.bin").write_bytes(other)  # now equal to u0, same size as before
    assert len(check(tmp_path / "digests.sqlite")) == 3
    assert {r.split(":")[1] for r in reads} == {"v0.bin"}  # the rest came from the cache
    reads.clear()
    (tmp_path / "blocked").write_text("a file where the cache's folder would be")
    assert len(check(tmp_path / "blocked" / "digests.sqlite")) == 3 and reads  # read again, nothing kept


def test_a_separate_unlabeled_pool(tmp_path):
    """Labeled class folders and a pool of unlabeled images elsewhere, as users keep them: a
    folder searched recursively (its sub-folders are not classes), a list file, or a glob."""
    from dho.config import DataConfig
    from dho.data.manifest import UNLABELED
    from dho.data.splits import splits_for

    labeled = make_synthetic_folder(tmp_path / "labeled", classes=("a", "b"), per_class=6)
    pool = make_synthetic_folder(tmp_path / "pool", classes=("x", "y", "z"), per_class=4, seed=5)  # 12 images, 3 folders
    m = splits_for(DataConfig(root=str(labeled), shots="all", unlabeled=str(pool)))
    assert len(m.labeled) + len(m.val) == 12 and m.test == []  # every labeled image used; no test split carved
    assert len(m.unlabeled) == 12 and all(y == UNLABELED and Path(p).is_absolute() for p, y in m.unlabeled)
    assert m.info["protocol"] == "folder all labeled, seed 1, val full" and "12 images of" in m.info["unlabeled_source"]
    m.save(tmp_path / "splits.json")
    assert SplitManifest.load(tmp_path / "splits.json").unlabeled == m.unlabeled
    listing = tmp_path / "pool.txt"
    listing.write_text("# unlabeled\n" + "\n".join(f"pool/x/{p.name}" for p in sorted((pool / "x").iterdir())) + "\n\n")
    assert len(splits_for(DataConfig(root=str(labeled), shots=2, unlabeled=str(listing))).unlabeled) == 4 + 2 * 3
    capped = splits_for(DataConfig(root=str(labeled), shots=2, unlabeled=str(tmp_path / "pool" / "*" / "*.png"), max_unlabeled=5))
    assert len(capped.unlabeled) == 5
    # the labeled images are not also unlabeled when the pool holds them
    assert len(splits_for(DataConfig(root=str(labeled), shots=2, unlabeled=str(tmp_path))).unlabeled) == 12 + 6
    with pytest.raises(ValueError, match="'a' has 5 training images left after carving validation images, fewer than shots=6"):
        splits_for(DataConfig(root=str(labeled), shots=6))
    (tmp_path / "missing.txt").write_text("nowhere.png\n")
    with pytest.raises(FileNotFoundError, match="1 of the 1 images .*missing.txt lists do not exist"):
        splits_for(DataConfig(root=str(labeled), shots=2, unlabeled=str(tmp_path / "missing.txt")))
    with pytest.raises(FileNotFoundError, match="no such folder, list file or glob"):
        splits_for(DataConfig(root=str(labeled), shots=2, unlabeled=str(tmp_path / "nope")))


def test_layouts_that_are_not_a_class_tree_are_named(tmp_path):
    from dho.config import ConfigError, DataConfig
    from dho.data.splits import splits_for

    make_synthetic_folder(tmp_path / "data" / "labeled", classes=("a", "b"), per_class=3)
    make_synthetic_folder(tmp_path / "data" / "unlabeled", classes=("u",), per_class=3)
    with pytest.raises(ValueError, match=r"holds unlabeled/ beside its class folders.*data.root=.*labeled data.unlabeled=.*unlabeled"):
        splits_for(DataConfig(root=str(tmp_path / "data")))
    with pytest.raises(ConfigError, match="data.root is not set"):
        splits_for(DataConfig())
    with pytest.raises(ConfigError, match="data.shots=all labels every image of a folder tree"):
        DataConfig(root="x", format="coop", dataset="dtd", shots="all")
