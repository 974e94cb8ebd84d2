"""CoOp's cached few-shot files, ``split_fewshot/shot_<K>-seed_<S>.pkl``: the exact images CoOp drew.

Each file is a pickle of ``{"train": [Datum, ...], "val": [Datum, ...]}`` (ImageNet's holds
"train" only), a Datum being Dassl's record of an image path, label and class name. The file is
read with an unpickler that builds nothing but those records: any other object in it is refused,
so a file from elsewhere cannot run code. Paths are absolute on the machine that wrote the file;
each is matched to this dataset's split list by its trailing components.
"""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["read_coop_fewshot"]

Item = tuple[str, int]


class _Datum:
    """Stands in for ``dassl.data.datasets.base_dataset.Datum`` while unpickling (state only)."""


class _DatumOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if name == "Datum" and module.split(".")[0] == "dassl":
            return _Datum
        raise pickle.UnpicklingError(f"holds a {module}.{name} object; a CoOp few-shot file holds only Dassl Datum records")


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            data = _DatumOnly(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a CoOp few-shot file: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise ValueError(f"{path} is not a CoOp few-shot file (expected a dict with a 'train' list)")
    return data


def _match(records: list, index: dict[str, Item], path: Path, key: str) -> list[Item]:
    """The pool items the records name: the longest trailing part of each record's path that is
    a path of the split list, with the same label."""
    depth = max(len(rel.split("/")) for rel in index)
    out = []
    for record in records:
        state = getattr(record, "__dict__", {})
        impath, label = state.get("_impath"), state.get("_label")
        if not isinstance(impath, str) or not isinstance(label, int):
            raise ValueError(f"{path}: a {key} record has no image path and label")
        parts = impath.replace("\\", "/").split("/")
        found = next((index["/".join(parts[-m:])] for m in range(min(depth, len(parts)), 0, -1)
                      if "/".join(parts[-m:]) in index), None)
        if found is None:
            raise ValueError(f"{path}: {key} image {impath!r} is not in this dataset's split list")
        if found[1] != label:
            raise ValueError(f"{path}: {key} image {impath!r} has label {label} there but {found[1]} in the split list")
        out.append(found)
    return out


def read_coop_fewshot(path: str | Path, train: list[Item], val: list[Item]) -> tuple[list[Item], list[Item] | None]:
    """(the labeled images, the validation images or None) that CoOp's file at ``path`` names,
    as items of ``train`` and ``val`` (the dataset's split lists)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CoOp few-shot file {str(path)!r} does not exist")
    data = _load(path)
    labeled = _match(data["train"], {rel: (rel, y) for rel, y in train}, path, "train")
    chosen_val = None
    if isinstance(data.get("val"), list) and val:
        chosen_val = _match(data["val"], {rel: (rel, y) for rel, y in val}, path, "val")
    return list(dict.fromkeys(labeled)), chosen_val
