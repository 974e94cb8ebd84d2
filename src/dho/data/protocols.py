"""The split engine: labeled / unlabeled / validation / test drawn from a dataset's pools, for
ImageFolder trees and benchmarks alike. K shots per class per seed (each class on its own, or
CoOp's sequential draw), the low-shot ImageNet subsets (the SimCLR 1% / 10% lists, or the DHO
code's balanced random draw), the two validation rules, the small-class policy and the unlabeled
cap. Every draw is a pure function of (seed, rule, class key, the class's files). The result is an
ordinary :class:`SplitManifest`, optionally cached as JSON."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .benchmarks import Pools, read_pools
from .coop_files import read_coop_fewshot
from .manifest import SplitInfo, SplitManifest

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = ["AUTHORS_SUBSET_SEED", "benchmark_manifest", "carve", "coop_fewshot", "protocol_manifest", "read_subset_file"]

log = logging.getLogger(__name__)

Item = tuple[str, int]
AUTHORS_SUBSET_SEED = 13  # numpy seed of the DHO code's balanced low-shot ImageNet subset
COOP_VAL_SHOTS = 4  # CoOp validates on min(K, 4) shots per class


def _order(item: Item) -> tuple:
    """Label, then path by its parts (the order of a sorted directory walk); the paths are
    relative POSIX paths, so splitting at "/" gives their parts (and is cheap on 1M items)."""
    return item[1], item[0].split("/")


def _by_class(items: list[Item], num_classes: int) -> list[list[Item]]:
    groups: list[list[Item]] = [[] for _ in range(num_classes)]
    for item in items:
        groups[item[1]].append(item)
    return [sorted(g, key=_order) for g in groups]


def _draw(group: list[Item], k: int, seed: int, tag: str) -> tuple[list[Item], list[Item]]:
    """(k drawn, the rest) of one class, a pure function of (seed, tag, the class's files)."""
    order = list(group)
    random.Random(f"{seed}|{tag}").shuffle(order)
    return sorted(order[:k], key=_order), sorted(order[k:], key=_order)


def _carve_count(n: int, fraction: float) -> int:
    """How many of a class's n images a carved split takes: round(n * fraction), at least 1,
    always leaving 1; none when fraction is 0."""
    return min(n - 1, max(1, round(n * fraction))) if n > 1 and fraction > 0 else 0


def carve(groups: list[list[Item]], fraction: float, seed: int, tag: str, keys: list[str]) -> tuple[list[list[Item]], list[Item]]:
    """(what each class keeps, what is carved from all of them): ``fraction`` of each class
    (:func:`_carve_count`), drawn per class by (seed, tag, the class's key)."""
    kept, carved = [], []
    for g, key in zip(groups, keys):
        taken, rest = _draw(g, _carve_count(len(g), fraction), seed, f"{tag}|{key}")
        kept.append(rest)
        carved += taken
    return kept, carved


def coop_fewshot(rows: list[Item], k: int, rng: random.Random) -> list[Item]:
    """CoOp's (Dassl's) few-shot draw over one split list: classes in order of their first row,
    rows in list order, ``rng.sample(rows of the class, k)`` from one generator shared by every
    class and by the validation draw that follows. Seeded with the run's seed it picks the same
    images as CoOp's ``split_fewshot/shot_<K>-seed_<S>.pkl`` whenever every class has k rows.
    A smaller class is taken whole; the generator still advances as the k draws with replacement
    of Dassl's ``repeat=True`` (its default in the versions CoOp-era code copied) advance it, so the
    later classes get those versions' images. Dassl versions defaulting to ``repeat=False`` do not
    draw for such a class, and their later classes differ."""
    by_label: dict[int, list[Item]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    out: list[Item] = []
    for items in by_label.values():
        if len(items) >= k:
            out += rng.sample(items, k)
        else:
            rng.choices(items, k=k)
            out += items
    return out


def read_subset_file(path: str | Path) -> set[str]:
    """A SimCLR-style subset list: one image file name per line (e.g. ``n01440764_10026.JPEG``);
    directories in a line are ignored, so ``train/<wnid>/<file>`` lines work as well."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"subset file {str(path)!r} does not exist")
    names = {Path(line.strip()).name for line in path.read_text().splitlines() if line.strip()}
    if not names:
        raise ValueError(f"subset file {path} lists no images")
    return names


SUBSET_FILE_NAMES = ("subsets/{pct}percent.txt", "{pct}percent.txt")  # SimCLR's names, under the dataset root


def subset_path(pools: Pools, data: DataConfig) -> Path:
    """``data.subset_file``, or SimCLR's list for ``data.fraction`` (``1percent.txt`` for 0.01)
    found in ``subsets/`` or at the top of the dataset root."""
    if data.subset_file:
        return Path(data.subset_file).expanduser()
    assert data.fraction is not None  # DataConfig: low_shot=file is a fraction protocol
    pct = f"{100 * data.fraction:g}"
    looked = [base / name.format(pct=pct) for base in dict.fromkeys((pools.image_root, pools.image_root.parent))
              for name in SUBSET_FILE_NAMES]
    for path in looked:
        if path.is_file():
            return path
    raise FileNotFoundError(f"data.low_shot=file: no subset list for fraction {data.fraction:g} at "
                            f"{', '.join(map(str, looked))}; name one with data.subset_file")


def listed_images(pools: Pools, data: DataConfig) -> set[str]:
    """The file names a subset list labels among this dataset's classes. A list written for all of
    ImageNet (SimCLR's) also names images of classes a subset of it lacks: those are ignored."""
    path = subset_path(pools, data)
    wanted = read_subset_file(path)
    wnids = set(pools.info.get("wnids") or ())
    if wnids:
        ours = {name for name in wanted if name.partition("_")[0] in wnids or "_" not in name}
        if len(ours) < len(wanted):
            log.info("%s: %d of its %d images are of classes this dataset lacks; ignored", path.name,
                     len(wanted) - len(ours), len(wanted))
        if not ours:
            raise ValueError(f"subset file {path} lists no image of this dataset's {len(wnids)} classes")
        wanted = ours
    return wanted


def _labeled_from_file(groups: list[list[Item]], wanted: set[str], path: Path, classes: list[str]) -> list[int]:
    """Per class, how many of its (already ordered) images the subset list names; reorders each
    group so the listed images come first. Listed names missing from the pool are named in a warning
    (an error when none is there)."""
    found: set[str] = set()
    counts: list[int] = []
    for g in groups:
        listed = [it for it in g if Path(it[0]).name in wanted]
        found.update(Path(it[0]).name for it in listed)
        g[:] = listed + [it for it in g if Path(it[0]).name not in wanted]
        counts.append(len(listed))
    missing = wanted - found
    if missing and not found:
        raise ValueError(f"none of the {len(wanted)} images in {path} is in the training pool "
                         f"(e.g. {min(missing)!r}); is data.root the matching ImageNet train set?")
    if missing:  # a subset of ImageNet's images (Imagenette) lacks some listed ones
        log.warning("%d of the %d images %s lists for these classes are not in the training pool (e.g. %r): "
                    "%d labeled", len(missing), len(wanted), path.name, min(missing), len(found))
    empty = [classes[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        log.warning("the subset file labels no image of %d class(es), e.g. %r", len(empty), empty[0])
    return counts


def _authors_counts(groups: list[list[Item]], fraction: float) -> list[int]:
    """The DHO code's balanced subset: the same number of images in every class, the fraction of
    the average class size (at least 1), drawn with numpy's legacy generator seeded with 13,
    class by class in label order; the drawn images are moved to the front of each group."""
    total = sum(len(g) for g in groups)
    k = max(1, round(fraction * total / len(groups)))
    rng = np.random.RandomState(AUTHORS_SUBSET_SEED)
    counts = []
    for g in groups:
        take = min(k, len(g))
        chosen = set(rng.choice(len(g), take, replace=False).tolist()) if take else set()
        g[:] = [g[i] for i in sorted(chosen)] + [g[i] for i in range(len(g)) if i not in chosen]
        counts.append(take)
    return counts


def protocol_manifest(pools: Pools, data: DataConfig) -> SplitManifest:
    """Labeled / unlabeled / validation / test from ``pools`` as ``data`` (a DataConfig) describes.

    Labeled: ``shots`` per class, each class drawn on its own (``shot_draw: dho``) or by CoOp's
    sequential draw over the split list (``coop``); or, low-shot, ``fraction`` of each class
    (``low_shot: per_class``), the images of ``subset_file`` (``file``) or the DHO code's balanced
    draw (``authors``). Unlabeled: the rest of train. Validation: the whole val split (``val_shots:
    full``) or min(K, 4) per class of it (``coop``); a dataset without one carves it from the
    training images never labeled: ``val_fraction`` per class, or min(K, 4) per class. A class with
    fewer training images than it labels follows ``small_classes``. Each class's draws are keyed by
    ``pools.draw_keys`` (folder trees: the class name; benchmarks: the label)."""
    seed, n = data.split_seed, len(pools.classes)
    keys = list(pools.draw_keys) if pools.draw_keys is not None else [str(c) for c in range(n)]
    info: SplitInfo = {"seed": seed, "shots": data.shots, "fraction": data.fraction, "protocol": _protocol_name(data),
                  "shot_draw": data.shot_draw, "test_source": "the test split", **pools.info}
    train = _by_class(pools.train, n)
    rng = random.Random(seed)  # shot_draw=coop: one generator, the labeled draw first, then val
    drawn: set[Item] = set()
    coop_val = None
    where = info.get("train_source", "the train split")
    if data.fewshot_file:
        labeled_list, coop_val = read_coop_fewshot(data.fewshot_file, pools.train, pools.val)
        drawn = set(labeled_list)
        _check_file_shots(pools.classes, [len(g) for g in train], drawn, data)
        info["fewshot_file"] = str(data.fewshot_file)
    elif data.shot_draw == "coop":
        assert isinstance(data.shots, int)  # DataConfig: CoOp's draw needs K shots of a benchmark
        _small_classes(pools.classes, [len(g) for g in train], [data.shots] * n, data.small_classes, where)
        drawn = set(coop_fewshot(pools.train, data.shots, rng))
    val = _validation(pools, train, data, rng, drawn, info, keys, coop_val)
    counts = _labeled_counts(pools, train, data, drawn, info)
    classes, test = list(pools.classes), list(pools.test)
    carved = [name for name, key in (("validation", "val_source"), ("test", "test_source")) if "carved" in str(info.get(key, ""))]
    dropped = _small_classes(classes, [len(g) for g in train], counts, data.small_classes, where,
                             f" left after carving {' and '.join(carved)} images" if carved else "")
    if dropped:
        info["dropped_classes"] = [classes[c] for c in dropped]
        keep = [c for c in range(n) if c not in dropped]
        relabel = {old: new for new, old in enumerate(keep)}
        train = [[(p, relabel[y]) for p, y in train[c]] for c in keep]
        val, test = ([(p, relabel[y]) for p, y in items if y in relabel] for items in (val, test))
        classes, counts, keys = [classes[c] for c in keep], [counts[c] for c in keep], [keys[c] for c in keep]
    labeled, unlabeled = [], []
    for c, (g, k) in enumerate(zip(train, counts)):
        if data.shot_draw != "coop" and not data.fewshot_file and (data.shots is not None or data.low_shot == "per_class"):
            a, b = _draw(g, min(k, len(g)), seed, f"shots|{keys[c]}")
        else:  # the chosen images are first in each group
            a, b = sorted(g[:k], key=_order), sorted(g[k:], key=_order)
        labeled += a
        unlabeled += b
    if data.max_unlabeled is not None:
        keep_share = min(1.0, data.max_unlabeled / max(1, len(unlabeled)))
        groups = _by_class(unlabeled, len(classes))
        unlabeled = [it for c, g in enumerate(groups) for it in _draw(g, round(len(g) * keep_share), seed, f"unlabeled|{keys[c]}")[0]]
        info["max_unlabeled"] = data.max_unlabeled
    manifest = SplitManifest(str(pools.image_root.resolve()), classes, sorted(labeled, key=_order),
                             sorted(unlabeled, key=_order), val, test, info)
    log.info("%s: %s", info["protocol"], manifest.summary())
    return manifest


def _validation(pools: Pools, train: list[list[Item]], data: DataConfig, rng: random.Random, drawn: set[Item], info: SplitInfo,
                keys: list[str], coop_val: list[Item] | None = None) -> list[Item]:
    """The validation images: from the val split (``coop_val``: those CoOp's file names), or carved
    out of ``train`` (which loses them) where there is none, never from images labeled by a subset
    file or CoOp's draw (``drawn``)."""
    seed, k_val = data.split_seed, min(data.shots, COOP_VAL_SHOTS) if isinstance(data.shots, int) else COOP_VAL_SHOTS
    if pools.val:
        if data.val_shots == "coop" and coop_val is not None:
            info["val_source"] = f"the {len(coop_val)} val images of {Path(str(data.fewshot_file)).name}"
            return coop_val
        if data.val_shots == "coop" and data.shot_draw == "coop":
            info["val_source"] = f"{k_val} per class of the val split (CoOp's draw)"
            return coop_fewshot(pools.val, k_val, rng)
        if data.val_shots == "coop":
            info["val_source"] = f"{k_val} per class of the val split"
            return [it for c, g in enumerate(_by_class(pools.val, len(train))) for it in _draw(g, k_val, seed, f"val|{keys[c]}")[0]]
        info.setdefault("val_source", "the val split")
        return list(pools.val)
    val: list[Item] = []
    listed = listed_images(pools, data) if data.shots is None and data.low_shot == "file" else set()
    for c, g in enumerate(train):
        free = [it for it in g if Path(it[0]).name not in listed and it not in drawn]
        k = min(k_val, len(free) - 1) if data.val_shots == "coop" else _carve_count(len(free), data.val_fraction)
        picked = _draw(free, max(k, 0), seed, f"val|{keys[c]}")[0]
        taken = set(picked)
        train[c] = [it for it in g if it not in taken]
        val += picked
    source = info.get("train_source", "train")
    if data.val_shots == "coop":
        info["val_source"] = f"{k_val} per class carved from {source}"
    else:
        info["val_source"] = f"carved {data.val_fraction:g} per class from {source}" if data.val_fraction > 0 else "none"
    return val


def _labeled_counts(pools: Pools, train: list[list[Item]], data: DataConfig, drawn: set[Item], info: SplitInfo) -> list[int]:
    """How many images of each class are labeled; a subset rule (CoOp's draw, a subset file, the
    balanced draw) also moves its chosen images to the front of each group."""
    if data.shot_draw == "coop" or data.fewshot_file:
        for g in train:
            g[:] = [it for it in g if it in drawn] + [it for it in g if it not in drawn]
        return [sum(it in drawn for it in g) for g in train]
    if data.shots == "all":
        return [len(g) for g in train]
    if data.shots is not None:
        return [data.shots] * len(train)
    assert data.fraction is not None  # DataConfig: one of shots and fraction is set
    if data.low_shot == "file":
        path = subset_path(pools, data)
        info["subset_file"] = str(path)
        return _labeled_from_file(train, listed_images(pools, data), path, pools.classes)
    if data.low_shot == "authors":
        return _authors_counts(train, data.fraction)
    return [max(1, round(len(g) * data.fraction)) for g in train]


def _small_classes(classes: list[str], sizes: list[int], counts: list[int], policy: str, where: str,
                   after: str = "") -> list[int]:
    """Classes with fewer training images than they label; an error unless ``policy`` says what to
    do: ``drop`` returns them (to leave the task), ``take_all`` labels all they have. ``after``
    says what was taken from the class first (" left after carving validation images")."""
    small = [(c, have, k) for c, (have, k) in enumerate(zip(sizes, counts)) if have < k]
    if not small:
        return []
    (first_c, have, k), rest = small[0], [repr(classes[c]) for c, _, _ in small[1:]]
    first = (f"class {classes[first_c]!r} has no training images in {where}" if have == 0
             else f"class {classes[first_c]!r} has {have} training images{after}, fewer than shots={k}")
    more = f" (so do {', '.join(rest[:5])}{', ...' if len(rest) > 5 else ''})" if rest else ""
    if policy == "error":
        raise ValueError(f"{first}{more}; set data.small_classes=drop or take_all to train anyway")
    if policy == "drop" and len(small) == len(classes):
        raise ValueError(f"no class would be left: {first}{more}")
    if policy == "take_all":
        log.warning("%s%s: labeling all of them (data.small_classes=take_all)", first, more)
        return []
    log.warning("%s%s: leaving %s out of the task (data.small_classes=drop)", first, more,
                "it" if not rest else f"these {len(small)} classes")
    return [c for c, _, _ in small]


def _check_file_shots(classes: list[str], sizes: list[int], drawn: set[Item], data: DataConfig) -> None:
    """CoOp's file must hold ``data.shots`` images of each class (of a smaller class, some: CoOp
    may have drawn it with replacement)."""
    assert isinstance(data.shots, int)  # DataConfig: a CoOp file needs K shots of a benchmark
    counts = [0] * len(classes)
    for _, y in drawn:
        counts[y] += 1
    wrong = [(classes[c], got) for c, got in enumerate(counts)
             if (got != data.shots if sizes[c] >= data.shots else not 1 <= got <= sizes[c])]
    if wrong:
        name, got = wrong[0]
        raise ValueError(f"{data.fewshot_file} labels {got} image(s) of class {name!r}, not data.shots={data.shots}"
                         f"{f' (nor does it for {len(wrong) - 1} more)' if len(wrong) > 1 else ''}")


def _protocol_name(data: DataConfig) -> str:
    if data.shots == "all":
        what = "all labeled"
    elif data.shots is not None:
        what = f"{data.shots}-shot"
    else:
        what = {"file": "subset-file", "authors": f"balanced-random-seed{AUTHORS_SUBSET_SEED}",
                "per_class": "per-class"}[data.low_shot] + f" {data.fraction:g}"
    draw = f", CoOp's file {Path(data.fewshot_file).name}" if data.fewshot_file else ", CoOp's draw" if data.shot_draw == "coop" else ""
    return f"{data.dataset or data.format} {what}{draw}, seed {data.split_seed}, val {data.val_shots}"


def _cache_key(data: DataConfig) -> str:
    fields = ("format", "dataset", "root", "split_file", "shots", "fraction", "split_seed", "val_shots", "val_fraction",
              "low_shot", "subset_file", "max_unlabeled", "small_classes", "shot_draw", "fewshot_file")
    text = json.dumps({f: getattr(data, f) for f in fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def benchmark_manifest(data: DataConfig) -> SplitManifest:
    """The manifest of a benchmark-format DataConfig. With ``data.manifest_dir`` it is read from
    there when it was drawn before (same data settings) and written there otherwise."""
    path = None
    if data.manifest_dir:
        what = f"shot{data.shots}" if data.shots is not None else f"{data.low_shot}{data.fraction:g}"
        name = f"{data.dataset or data.format}_{what}_seed{data.split_seed}_val-{data.val_shots}_{_cache_key(data)}.json"
        path = Path(data.manifest_dir).expanduser() / name
        if path.is_file():
            manifest = SplitManifest.load(path)
            log.info("splits from %s: %s", path, manifest.summary())
            return manifest
    manifest = protocol_manifest(read_pools(data.format, data.root, data.dataset, data.split_file), data)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest.save(path)
        log.info("wrote the splits to %s", path)
    return manifest

