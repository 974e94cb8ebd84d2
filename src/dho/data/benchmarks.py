"""The paper's benchmark datasets as they lie on disk (CoOp layout), read into train/val/test pools.

Each dataset has a directory holding its images and its split lists: the CoOp split file
``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relative path, label, class name], ...]}``),
FGVC-Aircraft's official lists (``images_variant_{train,val,test}.txt`` with ``variants.txt``), or,
for ImageNet, ``train/`` and ``val/`` WordNet-id folders with a ``classnames.txt`` of
"<wnid> <name>" lines. ``root`` may be that directory or its parent (the CoOp data root).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .folders import list_classes, scan_folder
from .manifest import SplitInfo

__all__ = ["DATASETS", "Benchmark", "Pools", "read_pools"]

log = logging.getLogger(__name__)

Item = tuple[str, int]


@dataclass(frozen=True)
class Benchmark:
    """Where one dataset keeps its files, relative to its own directory (CoOp's layout)."""

    folder: str  # the dataset's directory under the CoOp data root
    images: str  # image directory inside it; split-list paths are relative to it
    split_file: str | None  # CoOp's split file; None: FGVC txt lists or ImageNet folders
    has_val: bool = True


DATASETS: dict[str, Benchmark] = {
    "imagenet": Benchmark("imagenet", "images", None, has_val=False),
    "caltech101": Benchmark("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": Benchmark("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": Benchmark("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": Benchmark("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": Benchmark("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": Benchmark("fgvc_aircraft", "images", None),
    "sun397": Benchmark("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": Benchmark("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": Benchmark("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": Benchmark("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}


@dataclass
class Pools:
    """A dataset's full train / val / test lists before any shots are drawn. Paths are relative
    to ``image_root``; labels index ``classes``. ``val`` is empty when the dataset has none."""

    image_root: Path
    classes: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    info: SplitInfo = field(default_factory=lambda: SplitInfo())
    draw_keys: list[str] | None = None  # each class's key in the seeded draws; None = its label


def _dataset_dir(root: Path, bench: Benchmark, marker: str) -> Path:
    """``root`` itself when it holds ``marker``, else ``root/<the dataset's CoOp folder>``."""
    for candidate in (root, root / bench.folder):
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"{marker} not found in {str(root)!r} nor in {str(root / bench.folder)!r}")


def read_pools(fmt: str, root: str | Path, dataset: str | None, split_file: str | None = None) -> Pools:
    """The pools of ``data.format`` ``coop`` / ``fgvc`` / ``imagenet`` under ``root``.
    ``split_file`` overrides the split list (CoOp JSON) or ImageNet's ``classnames.txt``."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    if fmt == "coop":
        if dataset is None:
            raise ValueError("data.format=coop needs data.dataset (e.g. dtd)")
        if DATASETS[dataset].split_file is None:
            raise ValueError(f"{dataset} has no CoOp split file; use data.format="
                             f"{'fgvc' if dataset == 'fgvc_aircraft' else 'imagenet'}")
        return read_coop(root, dataset, split_file)
    if fmt == "fgvc":
        return read_fgvc(root)
    if fmt == "imagenet":
        return read_imagenet(root, split_file)
    raise ValueError(f"unknown data.format {fmt!r}")


def read_coop(root: Path, dataset: str, split_file: str | None = None) -> Pools:
    """A CoOp split file: class names come with the labels; every label must name one class."""
    bench = DATASETS[dataset]
    if split_file is not None:
        path = Path(split_file).expanduser()
        base = path.parent
    else:
        assert bench.split_file is not None  # read_pools sends only datasets with a CoOp split file here
        base = _dataset_dir(root, bench, bench.split_file)
        path = base / bench.split_file
    if not path.is_file():
        raise FileNotFoundError(f"CoOp split file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
        splits = {key: [(str(p), int(y), str(c)) for p, y, c in data[key]] for key in ("train", "val", "test")}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a CoOp split file ({type(err).__name__}: {err})") from None
    for key, rows in splits.items():
        for n, (rel, _, _) in enumerate(rows):
            _check_inside(rel, f"{path}: {key} row {n}")
    names: dict[int, str] = {}
    for rows in splits.values():
        for _, label, name in rows:
            if names.setdefault(label, name) != name:
                raise ValueError(f"{path}: label {label} is both {names[label]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: labels are not 0..{len(names) - 1}")
    classes = [names[i] for i in range(len(names))]
    image_root = base / bench.images if bench.images else base
    train, val, test = ([(p, y) for p, y, _ in splits[k]] for k in ("train", "val", "test"))
    pools = Pools(image_root, classes, train, val, test, info={"source": str(path), "format": "coop", "dataset": dataset})
    _check_present(pools)
    return pools


def read_fgvc(root: Path) -> Pools:
    """FGVC-Aircraft's official lists: "<image id> <variant name>" per line, classes in
    ``variants.txt`` order, images at ``images/<id>.jpg``."""
    base = _dataset_dir(root, DATASETS["fgvc_aircraft"], "variants.txt")
    classes = [line.strip() for line in (base / "variants.txt").read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}

    def read(split: str) -> list[Item]:
        path = base / f"images_variant_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"FGVC-Aircraft list {str(path)!r} does not exist")
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                raise ValueError(f"{path}:{n}: variant {variant!r} is not in variants.txt")
            items.append((f"{image_id}.jpg", index[variant]))
        return items

    pools = Pools(base / "images", classes, read("train"), read("val"), read("test"),
                  info={"source": str(base), "format": "fgvc", "dataset": "fgvc_aircraft"})
    _check_present(pools)
    return pools


def imagenet_classnames(path: Path | None) -> dict[str, str]:
    """WordNet id -> class name, from CoOp's ``classnames.txt`` ("<wnid> <name>" lines), or, without
    one, the first lemma of each synset as shipped with timm."""
    if path is not None and path.is_file():
        pairs = [line.strip().partition(" ") for line in path.read_text().splitlines() if line.strip()]
        return {wnid: name.strip() for wnid, _, name in pairs}
    from timm.data import ImageNetInfo

    names: dict[str, str] = {}
    for subset in ("imagenet-21k", "imagenet-1k"):  # 21k lacks one 1k synset (n04399382, teddy bear)
        info = ImageNetInfo(subset)
        names.update((w, lemmas.split(",")[0].strip()) for w, lemmas in zip(info.label_names(), info.label_descriptions()))
    return names


def _unique_names(wnids: list[str], names: dict[str, str]) -> list[str]:
    """Class names for ``wnids``; a name two synsets share gets its WordNet id appended."""
    raw = [names.get(w, w) for w in wnids]
    repeated = {n for n in raw if raw.count(n) > 1}
    if repeated:
        log.warning("class names shared by several WordNet ids (%s): the id is appended to tell them apart",
                    ", ".join(sorted(repeated)[:5]))
    return [f"{n} ({w})" if n in repeated else n for n, w in zip(raw, wnids)]


def read_imagenet(root: Path, classnames_file: str | None = None) -> Pools:
    """ImageNet as ``train/<wnid>/`` and ``val/<wnid>/`` (optionally under ``images/``, CoOp's
    layout). The official validation images are the test split; ImageNet has no validation split
    of its own, so the protocol carves one from train."""
    base = _dataset_dir(root, DATASETS["imagenet"], "images") if not (root / "train").is_dir() else root
    image_root = base / "images" if (base / "images" / "train").is_dir() else base
    if not (image_root / "train").is_dir():
        raise FileNotFoundError(f"no train/ folder under {str(image_root)!r}")
    wnids = list_classes(image_root / "train")
    names_path = Path(classnames_file).expanduser() if classnames_file else base / "classnames.txt"
    classes = _unique_names(wnids, imagenet_classnames(names_path))

    def items(split: str) -> list[Item]:
        found = scan_folder(image_root / split, wnids)
        return [(p.relative_to(image_root).as_posix(), i) for i, w in enumerate(wnids) for p in found[w]]

    test = items("val") if (image_root / "val").is_dir() else []
    if not test:
        raise FileNotFoundError(f"no val/ folder (the test split) under {str(image_root)!r}")
    return Pools(image_root, classes, items("train"), [], test,
                 info={"source": str(image_root), "format": "imagenet", "dataset": "imagenet", "wnids": wnids})


def _check_inside(rel: str, where: str) -> None:
    """A split list names files under its image folder: no absolute path, no ``..``."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if rel.startswith(("/", "\\")) or (parts and (":" in parts[0] or parts[0][:1] == "~")) or ".." in parts:
        raise ValueError(f"{where} ({rel!r}) points outside the image folder: a split list names files under it")


def _check_present(pools: Pools, sample: int = 20) -> None:
    """A wrong root shows up as missing files; check a few of each split, name the first."""
    for key in ("train", "val", "test"):
        rows = getattr(pools, key)
        for rel, _ in rows[:: max(1, len(rows) // sample)]:
            if not (pools.image_root / rel).exists():  # a pipe or a device is refused when read (BadImage)
                raise FileNotFoundError(f"{key} image {rel!r} of {pools.info['source']} is not under {str(pools.image_root)!r}")
