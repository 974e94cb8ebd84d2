"""Benchmark readers and split protocols on tiny replicas of each on-disk format."""

import dataclasses
import json
import logging

import pytest

from conftest import write_coop_tree, write_fgvc_tree, write_imagenet_tree
from dho.config import ConfigError, DataConfig
from dho.data.benchmarks import read_coop, read_fgvc, read_imagenet
from dho.data.manifest import SplitManifest
from dho.data.protocols import AUTHORS_SUBSET_SEED, protocol_manifest
from dho.data.splits import splits_for
from dho.teachers.templates import get_templates, templates_for


def coop(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), format="coop", dataset="dtd", **{"shots": 2, **kw})


def by_class(items):
    out = {}
    for p, y in items:
        out.setdefault(y, []).append(p)
    return out


def test_coop_split_file_is_read_from_the_data_root_or_the_dataset_dir(tmp_path):
    root = write_coop_tree(tmp_path)
    for where in (root, root / "dtd"):
        pools = read_coop(where, "dtd")
        assert pools.classes == ["banded", "braided", "cracked"]
        assert (len(pools.train), len(pools.val), len(pools.test)) == (18, 9, 6)
        assert pools.image_root == root / "dtd" / "images"
        assert all((pools.image_root / p).is_file() for p, _ in pools.train + pools.val + pools.test)


def test_coop_k_shot_protocol(tmp_path):
    root = write_coop_tree(tmp_path)
    m = splits_for(coop(root))
    pools = read_coop(root, "dtd")
    assert m.classes == pools.classes and m.test == pools.test
    assert {y: len(v) for y, v in by_class(m.labeled).items()} == {0: 2, 1: 2, 2: 2}
    assert sorted(m.labeled + m.unlabeled) == sorted(pools.train)  # unlabeled = the rest of train
    assert not set(m.labeled) & set(m.unlabeled)
    assert sorted(m.val) == sorted(pools.val)  # val_shots=full: the whole val split
    assert m.info["protocol"] == "dtd 2-shot, seed 1, val full"
    assert SplitManifest.load(_saved(m, tmp_path)).labeled == m.labeled  # the usual manifest format


def _saved(m, tmp_path):
    m.save(tmp_path / "splits.json")
    return tmp_path / "splits.json"


def test_coop_seeds_are_deterministic_and_distinct(tmp_path):
    root = write_coop_tree(tmp_path)
    draws = {s: splits_for(coop(root, split_seed=s)).labeled for s in (1, 2, 3)}
    assert splits_for(coop(root, split_seed=2)).labeled == draws[2]
    assert len({tuple(d) for d in draws.values()}) == 3


def test_coop_validation_rule(tmp_path):
    root = write_coop_tree(tmp_path)
    m = splits_for(coop(root, val_shots="coop"))
    assert {y: len(v) for y, v in by_class(m.val).items()} == {0: 2, 1: 2, 2: 2}  # min(K=2, 4)
    m16 = splits_for(coop(root, shots=5, val_shots="coop"))
    assert {y: len(v) for y, v in by_class(m16.val).items()} == {0: 3, 1: 3, 2: 3}  # min(5, 4) capped by the 3 there
    assert "per class of the val split" in m.info["val_source"]


def test_small_classes_are_an_explicit_decision(tmp_path):
    root = write_coop_tree(tmp_path)
    with pytest.raises(ValueError, match="class 'banded' has 6 training images, fewer than shots=8"):
        splits_for(coop(root, shots=8))
    m = splits_for(coop(root, shots=8, small_classes="take_all"))
    assert len(m.labeled) == 18 and m.unlabeled == []
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_path.read_text())
    split["train"] = [row for row in split["train"] if row[2] != "braided" or row[0].endswith(("_00.png", "_01.png"))]
    split_path.write_text(json.dumps(split))
    dropped = splits_for(coop(root, shots=3, small_classes="drop"))  # braided has 2 training images left
    assert dropped.classes == ["banded", "cracked"] and dropped.info["dropped_classes"] == ["braided"]
    assert {y for _, y in dropped.labeled + dropped.val + dropped.test} == {0, 1} and len(dropped.test) == 4
    with pytest.raises(ConfigError, match="small_classes=drop cannot change CoOp's draw"):
        coop(root, small_classes="drop", shot_draw="coop")


def test_manifest_cache_is_written_then_reused(tmp_path):
    root = write_coop_tree(tmp_path)
    cfg = coop(root, manifest_dir=str(tmp_path / "manifests"))
    first = splits_for(cfg)
    files = list((tmp_path / "manifests").glob("dtd_shot2_seed1_val-full_*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    data["info"]["marker"] = "from the cache"
    files[0].write_text(json.dumps(data))
    again = splits_for(cfg)
    assert again.info["marker"] == "from the cache" and again.labeled == first.labeled
    other = splits_for(coop(root, split_seed=2, manifest_dir=str(tmp_path / "manifests")))
    assert "marker" not in other.info and len(list((tmp_path / "manifests").iterdir())) == 2


def test_coop_format_errors(tmp_path):
    root = write_coop_tree(tmp_path)
    with pytest.raises(ConfigError, match="data.format=coop needs data.dataset"):
        DataConfig(root=str(root), format="coop")
    with pytest.raises(ConfigError, match="did you mean 'dtd'"):
        DataConfig(root=str(root), format="coop", dataset="dtdd")
    with pytest.raises(ConfigError, match="no CoOp split file: use data.format=fgvc"):
        DataConfig(root=str(root), format="coop", dataset="fgvc_aircraft")
    with pytest.raises(ConfigError, match="did you mean 'coop'"):
        DataConfig(root=str(root), format="cop", dataset="dtd")
    with pytest.raises(FileNotFoundError, match="split_zhou_EuroSAT.json not found"):
        splits_for(DataConfig(root=str(root), format="coop", dataset="eurosat"))
    (root / "dtd" / "images" / "banded" / "banded_train_00.png").unlink()
    with pytest.raises(FileNotFoundError, match="train image 'banded/banded_train_00.png'"):
        splits_for(coop(root))


def test_fgvc_lists(tmp_path):
    base = write_fgvc_tree(tmp_path)
    pools = read_fgvc(tmp_path)
    assert pools.classes == ["707-320", "A300B4", "Cessna 172"]  # variants.txt order; names may hold spaces
    assert (len(pools.train), len(pools.val), len(pools.test)) == (12, 6, 6)
    assert pools.train[0] == ("1000000.jpg", 0) and pools.image_root == base / "images"
    m = splits_for(DataConfig(root=str(base), format="fgvc", shots=1, val_shots="coop"))
    assert len(m.labeled) == 3 and len(m.unlabeled) == 9 and len(m.val) == 3 and len(m.test) == 6
    assert m.info["dataset"] == "fgvc_aircraft" and templates_for("auto", DataConfig(format="fgvc").dataset) == "fgvc_aircraft"
    (base / "images_variant_val.txt").write_text("1000099 Boeing 999\n")
    with pytest.raises(ValueError, match="variant 'Boeing 999' is not in variants.txt"):
        read_fgvc(base)


def test_imagenet_folders_carve_validation_from_train(tmp_path):
    write_imagenet_tree(tmp_path)
    pools = read_imagenet(tmp_path)
    assert pools.classes == ["tench", "goldfish", "great white shark"]
    assert len(pools.test) == 6 and pools.val == []
    cfg = DataConfig(root=str(tmp_path), format="imagenet", shots=2, val_shots="coop")
    m = splits_for(cfg)
    counts = {y: len(v) for y, v in by_class(m.val).items()}
    assert counts == {0: 2, 1: 2, 2: 2}  # min(K, 4) per class, carved from train
    assert sorted(m.labeled + m.unlabeled + m.val) == sorted(pools.train)
    assert not set(m.val) & set(m.labeled + m.unlabeled)
    assert all(p.startswith("val/") for p, _ in m.test)
    full = splits_for(DataConfig(root=str(tmp_path), format="imagenet", shots=2, val_fraction=0.2))
    assert len(full.val) == 6 and "carved 0.2 per class" in full.info["val_source"]


def test_imagenet_repeated_names_get_their_wordnet_id(tmp_path):
    write_imagenet_tree(tmp_path, names=("crane", "crane", "shark"))
    assert read_imagenet(tmp_path).classes == ["crane (n01440764)", "crane (n01443537)", "shark"]


def test_simclr_subset_file(tmp_path, caplog):
    write_imagenet_tree(tmp_path)
    listed = ["n01440764_train3.JPEG", "n01443537_train0.JPEG", "n01443537_train7.JPEG", "n01484850_train9.JPEG"]
    (tmp_path / "1percent.txt").write_text("\n".join(listed) + "\n")
    cfg = DataConfig(root=str(tmp_path), format="imagenet", shots=None, fraction=0.01, low_shot="file",
                     subset_file=str(tmp_path / "1percent.txt"), val_shots="coop")
    m = splits_for(cfg)
    assert sorted(p.rsplit("/", 1)[1] for p, _ in m.labeled) == sorted(listed)
    assert not {p for p, _ in m.val} & {p for p, _ in m.labeled}
    assert len(m.labeled) + len(m.unlabeled) + len(m.val) == 30
    assert m.info["protocol"].startswith("imagenet subset-file")
    (tmp_path / "1percent.txt").write_text("n01440764_missing.JPEG\n")
    with pytest.raises(ValueError, match="none of the 1 images in .* is in the training pool"):
        splits_for(cfg)
    (tmp_path / "1percent.txt").write_text("n01440764_missing.JPEG\nn01440764_train3.JPEG\n")
    with caplog.at_level(logging.WARNING, logger="dho"):
        assert [p.rsplit("/", 1)[1] for p, _ in splits_for(cfg).labeled] == ["n01440764_train3.JPEG"]
    assert "1 of the 2 images 1percent.txt lists for these classes are not in the training pool" in caplog.text
    (tmp_path / "1percent.txt").write_text("n09999999_1.JPEG\n")
    with pytest.raises(ValueError, match="lists no image of this dataset's 3 classes"):
        splits_for(cfg)


def test_subset_list_for_all_of_imagenet_found_under_the_root(tmp_path):
    """SimCLR's lists name images of all 1000 classes: a subset of ImageNet (Imagenette) keeps its
    own classes' names; without data.subset_file the list is found by the fraction."""
    write_imagenet_tree(tmp_path)
    ours = ["n01440764_train3.JPEG", "n01484850_train9.JPEG"]
    (tmp_path / "subsets").mkdir()
    (tmp_path / "subsets" / "10percent.txt").write_text("\n".join(["n09999999_7.JPEG", *ours, "n04399382_1.JPEG"]) + "\n")
    m = splits_for(DataConfig(root=str(tmp_path), format="imagenet", shots=None, fraction=0.1, low_shot="file"))
    assert sorted(p.rsplit("/", 1)[1] for p, _ in m.labeled) == ours
    assert m.info["subset_file"] == str(tmp_path / "subsets" / "10percent.txt")
    with pytest.raises(FileNotFoundError, match="no subset list for fraction 0.01 at .*1percent.txt"):
        splits_for(DataConfig(root=str(tmp_path), format="imagenet", shots=None, fraction=0.01, low_shot="file"))


def test_authors_balanced_subset(tmp_path):
    write_imagenet_tree(tmp_path, per_class={"train": 10, "val": 1})
    cfg = DataConfig(root=str(tmp_path), format="imagenet", shots=None, fraction=0.2, low_shot="authors", val_fraction=0.0)
    m = splits_for(cfg)
    assert {y: len(v) for y, v in by_class(m.labeled).items()} == {0: 2, 1: 2, 2: 2}  # 20% of the mean class size
    assert splits_for(dataclasses.replace(cfg, split_seed=7)).labeled == m.labeled  # seed 13, fixed
    assert f"seed{AUTHORS_SUBSET_SEED}" in m.info["protocol"]
    with pytest.raises(ConfigError, match="needs a benchmark data.format"):
        DataConfig(root=str(tmp_path), shots=None, fraction=0.2, low_shot="authors")


def test_templates_follow_the_dataset():
    assert templates_for("auto", "dtd") == "dtd" and get_templates(templates_for("auto", "dtd")) == ("{} texture.",)
    assert templates_for("auto", "imagenet") == "imagenet" and len(get_templates("imagenet")) == 7
    assert templates_for("auto", None) == "default" and get_templates("auto") == ("a photo of a {}.",)
    assert templates_for("eurosat", "dtd") == "eurosat"  # an explicit set wins


def test_protocol_manifest_over_pools_keeps_labels(tmp_path):
    root = write_coop_tree(tmp_path)
    m = protocol_manifest(read_coop(root, "dtd"), coop(root, shots=3))
    for rel, y in m.labeled + m.unlabeled + m.val + m.test:
        assert rel.split("/")[0] == m.classes[y]


def test_training_on_a_coop_benchmark(tiny_cfg, tmp_path):
    from dho.checkpoint import load_metadata
    from dho.loop import train

    root = write_coop_tree(tmp_path / "data")
    cfg = tiny_cfg.override({"data.root": str(root), "data.format": "coop", "data.dataset": "dtd",
                             "data.val_shots": "coop", "optim.epochs": 2})
    result = train(cfg)
    meta = load_metadata(result.run_dir / "checkpoint")
    assert meta["classes"] == ["banded", "braided", "cracked"]
    assert meta["templates"] == ["{} texture."]  # teacher.templates=auto follows data.dataset
    saved = SplitManifest.load(result.run_dir / "splits.json")
    assert len(saved.labeled) == 6 and len(saved.val) == 6 and len(saved.test) == 6


def test_paper_presets_load():
    from pathlib import Path

    from dho.config import load_config

    presets = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
    assert len(presets) == 14
    for path in presets:
        cfg = load_config(path)
        assert path.read_text().startswith("# paper, ") and "Expected" in path.read_text()
        assert cfg.data.format in ("coop", "fgvc", "imagenet") and cfg.teacher.templates == "auto"
        assert (cfg.data.shot_draw == "coop") == (cfg.data.shots is not None)  # few-shot presets draw as CoOp
        assert cfg.optim.max_steps is None  # their schedules run their whole length


def _dassl_fewshot(rows, k):
    """CoOp's rule as its code runs it: the global generator, classes in first-row order."""
    import random

    groups = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    return [r for items in groups.values() for r in (random.sample(items, k) if len(items) >= k else random.choices(items, k=k))]


def test_coop_draw_picks_coops_images(tmp_path):
    """shot_draw=coop: the images CoOp's seeded generator picks (train first, then val with
    min(K, 4)), whatever order the split file lists classes in."""
    import random

    root = write_coop_tree(tmp_path, per_class={"train": 9, "val": 5, "test": 1})
    path = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(path.read_text())
    for key in ("train", "val"):  # interleave the classes: first-row order is cracked, banded, braided
        split[key] = sorted(split[key], key=lambda r: ((r[1] + 1) % 3 + int(r[0][-6:-4]) * 3))
    path.write_text(json.dumps(split))
    pools = read_coop(root, "dtd")
    for seed, k in ((1, 2), (2, 5), (3, 8)):
        random.seed(seed)
        want_train, want_val = _dassl_fewshot(pools.train, k), _dassl_fewshot(pools.val, min(k, 4))
        m = splits_for(coop(root, shots=k, split_seed=seed, shot_draw="coop", val_shots="coop"))
        assert sorted(m.labeled) == sorted(want_train) and sorted(m.val) == sorted(want_val)
        assert sorted(m.labeled + m.unlabeled) == sorted(pools.train)
    assert "CoOp's draw" in m.info["protocol"] and m.info["shot_draw"] == "coop"
    # the first class drawn (cracked) keeps 3 training images: taken whole, the later classes still CoOp's
    split["train"] = [r for r in split["train"] if r[2] != "cracked" or int(r[0][-6:-4]) < 3]
    path.write_text(json.dumps(split))
    pools = read_coop(root, "dtd")
    random.seed(2)
    want = [r for r in _dassl_fewshot(pools.train, 5) if r[1] != 2] + [r for r in pools.train if r[1] == 2]
    m = splits_for(coop(root, shots=5, split_seed=2, shot_draw="coop", small_classes="take_all"))
    assert sorted(m.labeled) == sorted(want)
    independent = splits_for(coop(root, shots=2, split_seed=1))
    random.seed(1)
    assert sorted(independent.labeled) != sorted(_dassl_fewshot(pools.train, 2))  # the two draws do differ
    with pytest.raises(ValueError, match="class 'banded' has 9 training images, fewer than shots=16"):
        splits_for(coop(root, shots=16, shot_draw="coop"))
    with pytest.raises(ConfigError, match="shot_draw=coop draws K shots"):
        DataConfig(root=str(root), shots=2, shot_draw="coop")


def test_coop_draw_on_imagenet_carves_validation_after_the_shots(tmp_path):
    import random

    write_imagenet_tree(tmp_path)
    pools = read_imagenet(tmp_path)
    m = splits_for(DataConfig(root=str(tmp_path), format="imagenet", shots=2, shot_draw="coop", val_shots="coop"))
    random.seed(1)
    assert sorted(m.labeled) == sorted(_dassl_fewshot(pools.train, 2))
    assert not set(m.val) & set(m.labeled) and sorted(m.labeled + m.unlabeled + m.val) == sorted(pools.train)


def _coop_pickle(path, rows_by_split, prefix):
    """A file as CoOp writes it: Dassl Datum objects (a stand-in module, gone before reading)."""
    import pickle
    import sys
    import types

    names = ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset")
    for name in names:
        sys.modules[name] = types.ModuleType(name)

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = names[-1], "Datum"
    sys.modules[names[-1]].Datum = Datum
    try:
        data = {k: [Datum(f"{prefix}/{rel}", y, "c") for rel, y in rows] for k, rows in rows_by_split.items()}
        path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        for name in names:
            del sys.modules[name]


def test_coop_fewshot_file_gives_its_exact_images(tmp_path):
    import pickle

    root = write_coop_tree(tmp_path, per_class={"train": 9, "val": 5, "test": 1})
    pools = read_coop(root, "dtd")
    train = [r for y in range(3) for r in [it for it in pools.train if it[1] == y][2:4]]  # 2 per class
    val = [it for it in pools.val if it[0].endswith(("_01.png", "_03.png"))]
    path = tmp_path / "shot_2-seed_7.pkl"
    _coop_pickle(path, {"train": train, "val": val}, "/home/someone/DATA/dtd/images")
    m = splits_for(coop(root, shots=2, fewshot_file=str(path), val_shots="coop"))
    assert sorted(m.labeled) == sorted(train) and sorted(m.val) == sorted(val)
    assert sorted(m.labeled + m.unlabeled) == sorted(pools.train)
    assert "CoOp's file shot_2-seed_7.pkl" in m.info["protocol"]
    assert sorted(splits_for(coop(root, shots=2, fewshot_file=str(path))).val) == sorted(pools.val)  # val_shots=full
    with pytest.raises(ValueError, match="labels 2 image.s. of class 'banded', not data.shots=3"):
        splits_for(coop(root, shots=3, fewshot_file=str(path)))

    moved = tmp_path / "elsewhere.pkl"  # a path this split list does not have
    _coop_pickle(moved, {"train": [("banded/nope.png", 0)]}, "/x")
    with pytest.raises(ValueError, match="train image '/x/banded/nope.png' is not in this dataset's split list"):
        splits_for(coop(root, shots=1, fewshot_file=str(moved)))

    class Hostile:
        def __reduce__(self):
            return (print, ("this must never run",))

    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"train": [Hostile()]}))
    with pytest.raises(ValueError, match="not a CoOp few-shot file: holds a builtins.print object"):
        splits_for(coop(root, shots=1, fewshot_file=str(hostile)))
    with pytest.raises(ConfigError, match="data.fewshot_file names CoOp's K-shot draw"):
        DataConfig(root=str(root), shots=2, fewshot_file=str(path))


def test_every_paper_preset_draws_its_splits_from_a_replica_of_its_data(tmp_path):
    """Each preset's data section, pointed at a tiny copy of its on-disk format, yields the
    protocol its header names (shots lowered to fit the replicas)."""
    from pathlib import Path

    from dho.config import load_config

    write_fgvc_tree(tmp_path / "fgvc")
    write_imagenet_tree(tmp_path / "imagenet")
    (tmp_path / "1percent.txt").write_text("n01440764_train0.JPEG\nn01443537_train3.JPEG\nn01484850_train7.JPEG\n")
    presets = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
    for path in presets:
        cfg = load_config(path)
        d = cfg.data
        if d.format == "coop":
            root = write_coop_tree(tmp_path / "coop", per_class={"train": 6, "val": 5, "test": 2}, dataset=d.dataset)
        else:
            root = tmp_path / d.format
        extra = [f"data.root={root}", f"data.manifest_dir={tmp_path / 'manifests'}"]
        extra += ["data.shots=2"] if d.shots is not None else [f"data.subset_file={tmp_path / '1percent.txt'}"]
        m = splits_for(load_config(path, extra).data)
        protocol = m.info["protocol"]
        assert protocol.startswith(d.dataset), (path.name, protocol)
        if d.shots is not None:  # few-shot presets: CoOp's draw, K per class
            assert "2-shot, CoOp's draw" in protocol and _counts(m.labeled) == dict.fromkeys(range(len(m.classes)), 2)
        else:  # low-shot presets: the subset file's three images, no validation (alpha = beta = 0.5)
            assert "subset-file" in protocol and len(m.labeled) == 3 and m.val == []
        assert m.test and not set(m.labeled) & set(m.unlabeled)


def _counts(items):
    out = {}
    for _, y in items:
        out[y] = out.get(y, 0) + 1
    return out


def test_the_config_names_every_benchmark_reader():
    from dho.config import DATASET_NAMES
    from dho.data.benchmarks import DATASETS

    assert set(DATASET_NAMES) == set(DATASETS)


@pytest.mark.parametrize("row", ["../../outside.png", "/etc/hostname", "banded/../../../x.png"])
def test_split_lists_cannot_name_files_outside_their_image_folder(tmp_path, row):
    root = write_coop_tree(tmp_path)
    path = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(path.read_text())
    split["train"][3][0] = row
    path.write_text(json.dumps(split))
    with pytest.raises(ValueError, match=r"train row 3 \(.*\) points outside the image folder"):
        read_coop(root, "dtd")


def test_a_pipe_or_a_device_in_a_list_is_a_bad_image_not_a_hang(tmp_path):
    import os

    from dho.data.decode import BadImage, inspect_file, open_rgb

    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for name in ("fifo.png", "zero.png"):
        with pytest.raises(BadImage, match="not a regular file") as info:
            open_rgb(tmp_path / name)
        assert info.value.kind == "not_a_file"
    assert inspect_file(str(tmp_path / "zero.png"))["kind"] == "not_a_file"  # the audit: the pipe times out (test_audit)


def test_skip_bad_leaves_out_a_benchmark_images_that_cannot_be_decoded(tmp_path):
    """data.skip_bad works for every format: a CoOp list naming a truncated file and a FIFO trains without them."""
    import os

    from dho.data.benchmarks import DATASETS

    root = write_coop_tree(tmp_path)
    images = tmp_path / DATASETS["dtd"].folder / DATASETS["dtd"].images
    (images / "banded" / "banded_train_00.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    fifo = images / "braided" / "braided_test_00.png"
    fifo.unlink()
    os.mkfifo(fifo)
    full = splits_for(coop(root))
    kept = splits_for(coop(root, skip_bad=True))
    assert sorted(b["path"] for b in kept.info["bad_files"]) == ["banded/banded_train_00.png", "braided/braided_test_00.png"]
    everything = {p for key in ("labeled", "unlabeled", "val", "test") for p, _ in full.split(key)}
    left = {p for key in ("labeled", "unlabeled", "val", "test") for p, _ in kept.split(key)}
    assert everything - left == {"banded/banded_train_00.png", "braided/braided_test_00.png"}


def test_data_check_audits_every_file_a_benchmark_lists(tmp_path, capsys):
    """`dho data check ROOT --format coop --dataset dtd`: each listed file decoded, the bad ones named."""
    from dho.cli import main
    from dho.data.benchmarks import DATASETS

    root = write_coop_tree(tmp_path)
    assert main(["data", "check", str(root), "--format", "coop", "--dataset", "dtd", "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("clean")
    images = tmp_path / DATASETS["dtd"].folder / DATASETS["dtd"].images
    (images / "banded" / "banded_train_00.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    fifo = images / "braided" / "braided_test_00.png"
    fifo.unlink()
    __import__("os").mkfifo(fifo)  # never opened: a pipe would block the read
    out = tmp_path / "check"
    assert main(["data", "check", str(root), "--format", "coop", "--dataset", "dtd", "--workers", "1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "bad: 2 (undecodable 1, not_a_file 1)" in printed and "banded/banded_train_00.png: not an image" in printed, printed
    bad = {f["path"]: f["kind"] for f in json.loads((out / "data_check.json").read_text())["bad"]}
    assert bad == {"banded/banded_train_00.png": "undecodable", "braided/braided_test_00.png": "not_a_file"}
