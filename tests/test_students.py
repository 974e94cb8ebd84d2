import pytest
import torch
import torch.nn.functional as F

from dho.config import StudentConfig
from dho.heads import CosineHead, MLPHead
from dho.students import build_student

CLASSES = ["a", "b", "c"]


@pytest.mark.parametrize("backbone,source,dim", [("resnet18", "timm", 512), ("mobilenet_v2", "torchvision", 1280)])
def test_backbones_by_short_name(backbone, source, dim):
    student = build_student(StudentConfig(backbone=backbone, image_size=32), CLASSES)
    assert student.spec["source"] == source and student.spec["num_features"] == dim
    out = student(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert out.features.shape == (2, dim) and out.ce_logits.shape == out.kd_logits.shape == (2, 3)
    assert not torch.equal(out.ce_logits, out.kd_logits)  # independent heads


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_student(StudentConfig(backbone="resnet81"), CLASSES)


def test_language_aware_init_and_cosine_head():
    emb = F.normalize(torch.randn(3, 512), dim=-1)
    cfg = StudentConfig(backbone="resnet18", image_size=32, kd_head="cosine", language_init=True)
    student = build_student(cfg, CLASSES, class_embeddings=emb)
    assert torch.equal(student.ce_head.weight, emb) and torch.equal(student.ce_head.bias, torch.zeros(3))
    assert isinstance(student.kd_head, CosineHead) and torch.equal(student.kd_head.weight, emb)
    z = torch.randn(4, 512)
    torch.testing.assert_close(student.kd_head(z), 100 * F.normalize(z, dim=-1) @ emb.t())


def test_language_init_skipped_when_dims_differ(caplog):
    student = build_student(StudentConfig(backbone="resnet18", language_init=True), CLASSES, class_embeddings=torch.randn(3, 64))
    assert student.ce_head.weight.shape == (3, 512)
    assert "language-aware init skipped" in caplog.text


def test_mlp_head_and_single_head():
    student = build_student(StudentConfig(backbone="resnet18", image_size=32, kd_head="mlp"), CLASSES)
    assert isinstance(student.kd_head, MLPHead)
    single = build_student(StudentConfig(backbone="resnet18", image_size=32), CLASSES, dual_head=False)
    out = single(torch.rand(2, 3, 32, 32))
    assert single.kd_head is None and out.kd_logits is out.ce_logits


def test_predict_accepts_tensors_and_files(synth_root):
    student = build_student(StudentConfig(backbone="resnet18", image_size=32), ["circle", "square", "star", "triangle"])
    files = sorted((synth_root / "test" / "star").glob("*.png"))[:3]
    by_path = student.predict(files)
    assert by_path.probs.shape == (3, 4) and len(by_path.labels) == 3
    torch.testing.assert_close(by_path.probs.sum(-1), torch.ones(3))
    top2 = student.predict(files, topk=2)
    assert top2.indices.shape == (3, 2) and all(len(x) == 2 for x in top2.labels)
