"""ImageNet-V2 / -Sketch / -R / -A test folders and the 200-class masks."""

import pytest
import torch

from conftest import write_png
from dho.data.variants import (
    imagenet_wnids,
    mask_logits,
    subset_wnids,
    variant_manifest,
)

CLASSES = [f"class {i}" for i in range(1000)]


def test_subset_lists_are_200_imagenet_ids():
    all_ids = imagenet_wnids()
    assert len(all_ids) == 1000 and all_ids == sorted(all_ids)
    for name in ("imagenet-r", "imagenet-a"):
        ids = subset_wnids(name)
        assert len(ids) == 200 == len(set(ids)) and set(ids) <= set(all_ids)
    assert subset_wnids("imagenet-r")[:2] == ["n01443537", "n01484850"]
    assert subset_wnids("imagenet-a")[:2] == ["n01498041", "n01531178"]


def test_imagenet_r_folder_is_scored_on_its_200_classes(tmp_path):
    root = tmp_path / "imagenet-rendition"
    for i, wnid in enumerate(("n01443537", "n12267677")):
        write_png(root / "imagenet-r" / wnid / f"art_{i}.jpg", i)
    m = variant_manifest("imagenet-r", root, CLASSES)
    ids = imagenet_wnids()
    assert m.test == [("n01443537/art_0.jpg", ids.index("n01443537")), ("n12267677/art_1.jpg", ids.index("n12267677"))]
    subset = m.info["class_subset"]
    assert len(subset) == 200 and ids.index("n01443537") in subset and 0 not in subset  # tench is not in R
    write_png(root / "imagenet-r" / "n01440764" / "x.jpg", 9)
    with pytest.raises(ValueError, match="'n01440764' is not one of the 200 imagenet-r classes"):
        variant_manifest("imagenet-r", root, CLASSES)


def test_imagenet_v2_folders_are_class_indices(tmp_path):
    for label in (0, 7, 999):
        write_png(tmp_path / str(label) / "a.jpeg", label)
    m = variant_manifest("imagenet-v2", tmp_path, CLASSES)
    assert sorted(y for _, y in m.test) == [0, 7, 999] and "class_subset" not in m.info
    with pytest.raises(ValueError, match="against the 1000 ImageNet classes; this model has 3"):
        variant_manifest("imagenet-v2", tmp_path, ["a", "b", "c"])
    write_png(tmp_path / "1000" / "a.jpeg", 1)
    with pytest.raises(ValueError, match="ImageNet-V2 folders are class indices"):
        variant_manifest("imagenet-v2", tmp_path, CLASSES)


def test_sketch_uses_wordnet_folders(tmp_path):
    write_png(tmp_path / "images" / "n01440764" / "sketch_0.JPEG", 0)
    m = variant_manifest("imagenet-sketch", tmp_path, CLASSES)
    assert m.test == [("n01440764/sketch_0.JPEG", 0)] and m.root.endswith("images")


def test_masked_logits_never_predict_outside_the_subset():
    logits = torch.tensor([[5.0, 1.0, 0.0, 2.0], [0.0, 0.0, 9.0, 1.0]])
    masked = mask_logits(logits, [1, 3])
    assert masked.argmax(-1).tolist() == [3, 3]
    assert torch.allclose(masked.softmax(-1)[:, [0, 2]], torch.zeros(2, 2))
    assert mask_logits(logits, None) is logits


def test_eval_of_a_1000_class_student_on_imagenet_a(tmp_path, capsys):
    import json

    from dho.checkpoint import save_checkpoint
    from dho.cli.app import main
    from dho.config import StudentConfig
    from dho.ship.scoring import checkpoint_logits
    from dho.students import build_student

    torch.manual_seed(0)
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), CLASSES)
    save_checkpoint(student, tmp_path / "ckpt")
    for i, wnid in enumerate(("n01498041", "n12267677", "n12267677")):
        write_png(tmp_path / "imagenet-adversarial" / "imagenet-a" / wnid / f"{i}.jpg", i)
    logits, _, _ = checkpoint_logits(tmp_path / "ckpt", data=tmp_path / "imagenet-adversarial", variant="imagenet-a")
    subset = subset_wnids("imagenet-a")
    inside = torch.tensor([w in subset for w in imagenet_wnids()])
    assert torch.isinf(logits.ce[:, ~inside]).all() and torch.isfinite(logits.ce[:, inside]).all()
    assert inside[logits.kd.argmax(-1)].all()
    rc = main(["-q", "eval", str(tmp_path / "ckpt"), "--data", str(tmp_path / "imagenet-adversarial"),
               "--variant", "imagenet-a", "--out", str(tmp_path / "out")])
    assert rc == 0 and "imagenet-a at" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["n"] == 3


def test_eval_on_wordnet_id_folders_without_a_variant(tmp_path):
    """ImageNet's own val/ tree (WordNet-id folders) scores a student whose classes are names:
    the ids recorded at training (split info) or, for 1000 classes, the standard order map them."""
    from dho.checkpoint import save_checkpoint
    from dho.config import StudentConfig
    from dho.ship.scoring import checkpoint_logits
    from dho.students import build_student

    torch.manual_seed(0)
    names, wnids = ["goldfish", "tench", "shark"], ["n01443537", "n01440764", "n01491361"]
    small = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), names)
    save_checkpoint(small, tmp_path / "small", split={"wnids": wnids})
    for i, wnid in enumerate(("n01440764", "n01491361")):
        write_png(tmp_path / "val" / wnid / f"{i}.JPEG", i)
    logits, _, _ = checkpoint_logits(tmp_path / "small", data=tmp_path, split="val")
    assert logits.labels.tolist() == [1, 2]  # tench, shark: by the recorded ids, not the folder order

    big = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), CLASSES)
    save_checkpoint(big, tmp_path / "big")
    logits, _, _ = checkpoint_logits(tmp_path / "big", data=tmp_path / "val")
    ids = imagenet_wnids()
    assert logits.labels.tolist() == [ids.index("n01440764"), ids.index("n01491361")]

    with pytest.raises(ValueError, match="holds val/ rather than class folders: name one of them, e.g. --data .*val"):
        checkpoint_logits(tmp_path / "small", data=tmp_path)  # the dataset root, not its split
    write_png(tmp_path / "val" / "n99999999" / "x.JPEG", 3)
    with pytest.raises(ValueError, match="n99999999"):
        checkpoint_logits(tmp_path / "small", data=tmp_path / "val")
