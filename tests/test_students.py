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


def test_clip_image_tower_student_trains_with_language_init(tiny_cfg, tiny_clip):
    from dho.checkpoint import load_student
    from dho.students import student_text_embeddings
    from dho.train import _build_student, train

    cfg = tiny_cfg.override({"student.backbone": tiny_clip, "student.kd_head": "cosine", "student.language_init": True,
                             "optim.epochs": 2})  # the synthetic teacher's 64-d embeddings do not fit the 16-d tower
    student = build_student(StudentConfig(backbone=tiny_clip, source="open_clip", image_size=32), ["a", "b"])
    assert student.spec["source"] == "open_clip" and student.spec["num_features"] == 16

    class Prompts:  # what _build_student reads from a teacher
        class_embeddings = torch.zeros(4, 64)
        templates = ("a photo of a {}.",)

    classes = ["w", "x", "y", "z"]
    torch.manual_seed(1)  # the tiny tower is random: the same seed gives the same text tower
    own = student_text_embeddings(cfg.student, classes, Prompts.templates)
    assert own.shape == (4, 16)
    torch.manual_seed(1)
    built = _build_student(cfg, Prompts, classes)  # the heads start from the tower's own text embeddings
    torch.testing.assert_close(built.ce_head.weight, own)
    torch.testing.assert_close(built.kd_head.weight, own)
    result = train(cfg)
    reloaded = load_student(result.run_dir / "checkpoint")
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(reloaded.predict(x).probs, result.student.predict(x).probs)


def test_clip_tower_student_at_another_size_keeps_its_grid_through_a_checkpoint(tmp_path, tiny_clip, caplog):
    """A CLIP ViT student at a non-native input size gets an interpolated positional grid, and its
    checkpoint rebuilds the same architecture; a CLIP ResNet student refuses another size."""
    import open_clip

    from dho.checkpoint import load_student, save_checkpoint

    torch.manual_seed(0)
    torch.save(open_clip.create_model(tiny_clip).state_dict(), tmp_path / "tiny.pt")
    cfg = StudentConfig(backbone=tiny_clip, source="open_clip", image_size=48, weights=str(tmp_path / "tiny.pt"))
    student = build_student(cfg, ["a", "b"]).eval()
    assert student.backbone.positional_embedding.shape[0] == (48 // 16) ** 2 + 1
    assert student.spec["timm_kwargs"] == {"image_size": 48}
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    save_checkpoint(student, tmp_path / "ckpt", classes=["a", "b"])
    caplog.clear()
    again = load_student(tmp_path / "ckpt")
    assert "initialized randomly" not in caplog.text  # open_clip's note is wrong for a checkpoint being loaded
    open_clip.create_model(tiny_clip)
    assert "initialized randomly" in caplog.text  # ... and only silenced there
    with torch.no_grad():
        torch.testing.assert_close(again(images).ce_logits, student(images).ce_logits)
    with pytest.raises(ValueError, match="runs only at its native 224 px"):
        build_student(StudentConfig(backbone="RN50", source="open_clip", image_size=160), ["a", "b"])


def test_a_backbone_asked_of_the_wrong_library_says_which_has_it():
    from dho.students import create_backbone

    with pytest.raises(ValueError, match="torchvision has no model 'efficientnet_lite0' .timm has it: student.source=timm"):
        create_backbone("efficientnet_lite0", source="torchvision", pretrained=True)
    with pytest.raises(ValueError, match="timm has no model 'mobilenet_v2' .torchvision has it"):
        create_backbone("mobilenet_v2", source="timm")
