"""Importing the DHO authors' released checkpoints (a fake one built from a random torchvision tower)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dho.checkpoint import load_metadata, load_student
from dho.cli.app import main
from dho.mixing import mix_probs
from dho.ship.released import import_checkpoint, read_class_names

CLASSES = ["cat", "dog", "owl"]


class AuthorsStudent(nn.Module):
    """The layout of the authors' students: a torchvision model's children minus the classifier."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        tower = torchvision.models.get_model(arch, weights=None)
        self.backbone = nn.Sequential(*list(tower.children())[:-1])
        features = {"resnet18": 512, "mobilenet_v2": 1280}[arch]
        self.ce_head = nn.Linear(features, len(CLASSES))
        self.kd_head = nn.Linear(features, len(CLASSES))

    def forward(self, x):
        z = F.adaptive_avg_pool2d(self.backbone(x), 1).flatten(1)
        return self.ce_head(z), self.kd_head(z)


def fake_checkpoint(path, arch="resnet18", alpha=0.3, beta=2.0, ddp=True):
    torch.manual_seed(0)
    model = AuthorsStudent(arch).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a wrong key mapping shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {("module." if ddp else "") + k: v for k, v in model.state_dict().items()}
    # train_others.py saves the alpha and beta it found by iterating numpy arrays: numpy float64
    torch.save({"model_state_dict": state, "alpha": np.float64(alpha), "beta": np.float64(beta), "epoch": 7,
                "acc": 55.5}, path)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_imported_student_matches_the_authors_model(tmp_path, arch):
    theirs = fake_checkpoint(tmp_path / "ckpt.pt", arch)
    import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", arch, CLASSES)
    ours = load_student(tmp_path / "out")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ce, kd = theirs(ours.preprocess(x))
        out = ours(x)
    torch.testing.assert_close(out.ce_logits, ce, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.kd_logits, kd, rtol=1e-4, atol=1e-4)
    # their current mix a * ce + (1 - a) * kd (since f74da67) is ours with alpha = a
    assert ours.alpha == pytest.approx(0.3) and ours.beta == 2.0
    expected = 0.3 * ce.softmax(-1) + 0.7 * (kd / 2.0).softmax(-1)
    torch.testing.assert_close(mix_probs(out.ce_logits, out.kd_logits, ours.alpha, ours.beta), expected)
    meta = load_metadata(tmp_path / "out")
    assert meta["imported"]["alpha_in_file"] == 0.3 and meta["imported"]["epoch"] == 7
    # a file of their code before f74da67 mixed (1 - a) * ce + a * kd: alpha = 1 - a
    import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "old", arch, CLASSES, alpha_convention="pre-f74da67")
    old = load_student(tmp_path / "old")
    expected = 0.7 * ce.softmax(-1) + 0.3 * (kd / 2.0).softmax(-1)
    torch.testing.assert_close(mix_probs(out.ce_logits, out.kd_logits, old.alpha, old.beta), expected)


def test_import_errors(tmp_path):
    fake_checkpoint(tmp_path / "ckpt.pt", ddp=False)
    with pytest.raises(ValueError, match="heads have 3 classes, the class list 2"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", "resnet18", ["a", "b"])
    with pytest.raises(ValueError, match="resnet50 has 2048 features, the checkpoint's heads read 512"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", "resnet50", CLASSES)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="has no model_state_dict"):
        import_checkpoint(tmp_path / "other.pt", tmp_path / "out", "resnet18", CLASSES)
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "fn": print}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="cannot be read as a plain torch file"):  # weights_only refuses code
        import_checkpoint(tmp_path / "code.pt", tmp_path / "out", "resnet18", CLASSES)


def test_class_names_from_text_manifest_or_coop_split(tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\n\nowl\n")
    (tmp_path / "splits.json").write_text(json.dumps({"classes": CLASSES}))
    rows = [["owl/1.jpg", 2, "owl"], ["cat/1.jpg", 0, "cat"], ["dog/2.jpg", 1, "dog"]]
    (tmp_path / "split_zhou_X.json").write_text(json.dumps({"train": rows, "val": [], "test": []}))
    for name in ("c.txt", "splits.json", "split_zhou_X.json"):
        assert read_class_names(tmp_path / name) == CLASSES


def test_cli_import_checkpoint(tmp_path, capsys):
    fake_checkpoint(tmp_path / "ckpt.pt", alpha=0.25)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    rc = main(["-q", "import-checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "out"),
               "--arch", "resnet18", "--classes", str(tmp_path / "classes.txt")])
    assert rc == 0
    assert "alpha=0.25 (the file's 0.25, current convention), beta=2.00" in capsys.readouterr().out
    rc = main(["-q", "import-checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "out2"),
               "--arch", "resnet18", "--classes", str(tmp_path / "classes.txt"), "--alpha-convention", "pre-f74da67"])
    assert rc == 0 and load_student(tmp_path / "out2").alpha == 0.75


def test_torchvision_weights_without_a_classifier_load(tmp_path):
    from dho.config import StudentConfig
    from dho.students import build_student

    tower = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in tower.state_dict().items() if not k.startswith("fc.")}  # as DINO ships it
    torch.save(state, tmp_path / "ssl.pth")
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, source="torchvision",
                                          weights=str(tmp_path / "ssl.pth")), CLASSES)
    torch.testing.assert_close(student.backbone.conv1.weight, tower.conv1.weight)
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="1 unexpected"):
        build_student(StudentConfig(backbone="resnet18", pretrained=False, source="torchvision",
                                    weights=str(tmp_path / "bad.pth")), CLASSES)


def test_clip_tower_student_is_imported_with_a_cosine_kd_head(tmp_path, tiny_clip):
    import open_clip

    torch.manual_seed(0)
    tower = open_clip.create_model(tiny_clip).visual.eval()
    ce, kd = nn.Linear(16, 3), nn.Linear(16, 3)
    state = {**{f"module.backbone.{k}": v for k, v in tower.state_dict().items()},
             **{f"module.ce_head.{k}": v for k, v in ce.state_dict().items()},
             **{f"module.kd_head.{k}": v for k, v in kd.state_dict().items()}}
    torch.save({"model_state_dict": state, "alpha": 0.5, "beta": 0.5}, tmp_path / "vit.pt")
    import_checkpoint(tmp_path / "vit.pt", tmp_path / "out", tiny_clip, CLASSES, image_size=32)
    ours = load_student(tmp_path / "out")
    assert ours.spec.source == "open_clip" and ours.spec.kd_head == "cosine"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = tower(ours.preprocess(x))
        out = ours(x)
    torch.testing.assert_close(out.ce_logits, ce(z), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.kd_logits, kd(F.normalize(z, dim=-1)) * 100, rtol=1e-4, atol=1e-3)  # their KD head
    assert ours.preprocess.describe()["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
