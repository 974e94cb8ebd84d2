import pytest
import torch
import torch.nn.functional as F

from dho.config import StudentConfig
from dho.heads import CosineHead, MLPHead
from dho.students import build_student

CLASSES = ["a", "b", "c"]


@pytest.mark.parametrize("backbone,source,dim", [("resnet18", "timm", 512), ("mobilenet_v2", "torchvision", 1280)])
def test_backbones_by_short_name(backbone, source, dim):
    student = build_student(StudentConfig(backbone=backbone, pretrained=False, image_size=32), CLASSES)
    assert student.spec.source == source and student.spec.num_features == dim
    out = student(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert out.features.shape == (2, dim) and out.ce_logits.shape == out.kd_logits.shape == (2, 3)
    assert not torch.equal(out.ce_logits, out.kd_logits)  # independent heads


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_student(StudentConfig(backbone="resnet81"), CLASSES)


def test_language_aware_init_and_cosine_head():
    emb = F.normalize(torch.randn(3, 512), dim=-1)
    cfg = StudentConfig(backbone="resnet18", pretrained=False, image_size=32, kd_head="cosine", language_init=True)
    student = build_student(cfg, CLASSES, class_embeddings=emb)
    assert torch.equal(student.ce_head.weight, emb) and torch.equal(student.ce_head.bias, torch.zeros(3))
    assert isinstance(student.kd_head, CosineHead) and torch.equal(student.kd_head.weight, emb)
    z = torch.randn(4, 512)
    torch.testing.assert_close(student.kd_head(z), 100 * F.normalize(z, dim=-1) @ emb.t())


def test_language_init_skipped_when_dims_differ(caplog):
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, language_init=True), CLASSES,
                            class_embeddings=torch.randn(3, 64))
    assert student.ce_head.weight.shape == (3, 512)
    assert "language-aware init skipped" in caplog.text


def test_mlp_head_and_single_head():
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32, kd_head="mlp"), CLASSES)
    assert isinstance(student.kd_head, MLPHead)
    single = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), CLASSES, dual_head=False)
    out = single(torch.rand(2, 3, 32, 32))
    assert single.kd_head is None and out.kd_logits is out.ce_logits


def test_predict_accepts_tensors_and_files(synth_root):
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["circle", "square", "star", "triangle"])
    files = sorted((synth_root / "test" / "star").glob("*.png"))[:3]
    by_path = student.predict(files)
    assert by_path.probs.shape == (3, 4) and len(by_path.labels) == 3
    torch.testing.assert_close(by_path.probs.sum(-1), torch.ones(3))
    top2 = student.predict(files, topk=2)
    assert top2.indices.shape == (3, 2) and all(len(x) == 2 for x in top2.labels)
    # numpy arrays as PIL / OpenCV hand them over (HWC RGB), one, a list, a batch, or [0, 1] floats
    import numpy as np
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    for images in (arrays, np.stack(arrays), [a.astype(np.float32) / 255 for a in arrays], [a.transpose(2, 0, 1) for a in arrays]):
        torch.testing.assert_close(student.predict(images).probs, by_path.probs)
    torch.testing.assert_close(student.predict(arrays[0]).probs, by_path.probs[:1])
    grey = np.asarray(Image.open(files[0]).convert("L"))
    torch.testing.assert_close(student.predict(grey).probs, student.predict(np.repeat(grey[:, :, None], 3, 2)).probs)
    with pytest.raises(ValueError, match="uint8, or floats in"):
        student.predict(arrays[0].astype(np.float32))  # 0-255 floats are not [0, 1]


def test_clip_image_tower_student_trains_with_language_init(tiny_cfg, tiny_clip):
    from dho.backbones import student_text_embeddings
    from dho.checkpoint import load_student
    from dho.loop import train
    from dho.training.setup import method_student

    cfg = tiny_cfg.override({"student.backbone": tiny_clip, "student.kd_head": "cosine", "student.language_init": True,
                             "optim.epochs": 2})  # the synthetic teacher's 64-d embeddings do not fit the 16-d tower
    student = build_student(StudentConfig(backbone=tiny_clip, source="open_clip", pretrained=False, image_size=32), ["a", "b"])
    assert student.spec.source == "open_clip" and student.spec.num_features == 16

    class Prompts:  # what _student reads from a teacher
        class_embeddings = torch.zeros(4, 64)
        templates = ("a photo of a {}.",)

    classes = ["w", "x", "y", "z"]
    torch.manual_seed(1)  # the tiny tower is random: the same seed gives the same text tower
    own = student_text_embeddings(cfg.student, classes, Prompts.templates)
    assert own.shape == (4, 16)
    torch.manual_seed(1)
    built = method_student(cfg, Prompts, classes, torch.device("cpu"))  # the heads start from the tower's own text embeddings
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
    assert student.spec.timm_kwargs == {"image_size": 48}
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
        build_student(StudentConfig(backbone="RN50", source="open_clip", pretrained=False, image_size=160), ["a", "b"])


def test_a_backbone_asked_of_the_wrong_library_says_which_has_it():
    from dho.backbones import create_backbone

    with pytest.raises(ValueError, match="torchvision has no model 'efficientnet_lite0' .timm has it: student.source=timm"):
        create_backbone("efficientnet_lite0", source="torchvision", pretrained=True)
    with pytest.raises(ValueError, match="timm has no model 'mobilenet_v2' .torchvision has it"):
        create_backbone("mobilenet_v2", source="timm")


def test_cosine_head_bias_sits_inside_the_scale_as_in_the_authors_code():
    """Their KD head is 100 * (W normalize(z) + b): the bias's gradient is 100 times the logits',
    so under AdamW (steps of about lr in each parameter) it moves the logits 100 times as far."""
    torch.manual_seed(0)
    head = CosineHead(8, 3, zeta=0.01)  # cosine_bias="scaled", the default
    plain = CosineHead(8, 3, zeta=0.01, scale_bias=False)
    plain.load_state_dict(head.state_dict())
    z = torch.randn(5, 8)
    reference = 100 * (F.normalize(z, dim=-1) @ head.weight.t() + head.bias)  # written from their formula
    torch.testing.assert_close(head(z), reference)
    torch.testing.assert_close(plain(z), 100 * F.normalize(z, dim=-1) @ head.weight.t() + head.bias)
    head(z).sum().backward()
    plain(z).sum().backward()
    torch.testing.assert_close(head.bias.grad, torch.full((3,), 500.0))  # 5 rows x 100
    torch.testing.assert_close(plain.bias.grad, torch.full((3,), 5.0))
    torch.testing.assert_close(head.weight.grad, plain.weight.grad)
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32, kd_head="cosine"), CLASSES)
    assert student.spec.cosine_bias == "scaled" and student.kd_head.scale_bias


def test_separate_forwards_give_each_stream_its_own_batchnorm_statistics():
    torch.manual_seed(0)
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), CLASSES).train()
    x = torch.rand(6, 3, 32, 32)
    x[4:] *= 0.2  # the second stream looks different, so its batch statistics differ
    state = {k: v.clone() for k, v in student.state_dict().items()}
    split = student(x, split=4)
    student.load_state_dict(state)
    first, second = student(x[:4]), student(x[4:])  # the authors' two calls
    torch.testing.assert_close(split.ce_logits, torch.cat([first.ce_logits, second.ce_logits]))
    torch.testing.assert_close(split.features, torch.cat([first.features, second.features]))
    student.load_state_dict(state)
    joint = student(x)
    assert not torch.allclose(joint.ce_logits, split.ce_logits, atol=1e-3)


def test_torchvision_mobilenet_v2_keeps_only_its_feature_layers():
    """The authors' MobileNetV2 student is its children up to the classifier: no Dropout(0.2)."""
    torch.manual_seed(0)
    student = build_student(StudentConfig(backbone="mobilenet_v2", source="torchvision", pretrained=False, image_size=32), CLASSES)
    assert not any(isinstance(m, torch.nn.Dropout) for m in student.backbone.modules())
    student.train()
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    a = student.backbone(student.preprocess(x))
    torch.manual_seed(2)
    b = student.backbone(student.preprocess(x))
    torch.testing.assert_close(a, b)  # nothing random between the features and the heads
    kept = build_student(StudentConfig(backbone="mobilenet_v2", source="torchvision", pretrained=False, image_size=32,
                                        keep_dropout=True),
                         CLASSES)
    assert any(isinstance(m, torch.nn.Dropout) for m in kept.backbone.modules())
    assert kept.spec.timm_kwargs == {"keep_dropout": True}


def test_language_init_takes_the_raw_mean_of_the_prompt_embeddings():
    """The authors' language-aware init: per class the plain mean of the text tower's raw prompt
    embeddings (no normalisation), copied into both heads."""
    from dho.teachers.synthetic import SyntheticTeacher

    teacher = SyntheticTeacher(embed_dim=16)
    templates = ("a photo of a {}.", "art of the {}.", "a {} in a video game.")
    for average in ("raw_mean", "mean", "renormalized"):
        teacher.set_classes(CLASSES, templates, average)
        for i, name in enumerate(CLASSES):
            raw = teacher.embed_prompts(name, templates)
            expected = {"raw_mean": raw.mean(0), "mean": F.normalize(raw, dim=-1).mean(0),
                        "renormalized": F.normalize(F.normalize(raw, dim=-1).mean(0), dim=0)}[average]
            torch.testing.assert_close(teacher.class_embeddings[i], expected)
