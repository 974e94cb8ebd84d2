import pytest
import torch
from PIL import Image

from dho.loop import train
from dho.ship.classifier import DHOClassifier
from dho.ship.export import MixedClassifier, export_checkpoint, load_exported


@pytest.fixture(scope="module")
def run_dir(synth_root, tmp_path_factory):
    from dho.config import RunConfig

    cfg = RunConfig().override({
        "data.root": str(synth_root), "data.shots": 2, "student.backbone": "resnet18", "student.pretrained": False,
        "student.image_size": 32,
        "optim.epochs": 3, "optim.batch_size": 8, "eval.batch_size": 64, "threads": 2,
        "out": str(tmp_path_factory.mktemp("export") / "run")})
    return train(cfg).run_dir


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_matches_pytorch_on_real_images_for_any_batch(run_dir, tmp_path, fmt, suffix):
    out = tmp_path / f"student{suffix}"
    report = export_checkpoint(run_dir / "checkpoint", out, fmt, count=20, teacher_speed=False)
    assert report["max_abs_diff"] <= 1e-4 and report["images_checked"] == 20
    clf = DHOClassifier.from_pretrained(run_dir / "checkpoint")
    reference = MixedClassifier(clf.student)
    run = load_exported(out)
    for n in (1, 3, 7):  # the batch dimension is dynamic
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        probs = run(images)
        assert probs.shape == (n, len(clf.classes))
        assert torch.allclose(probs, reference(images), atol=1e-4)
        assert torch.allclose(probs.sum(-1), torch.ones(n), atol=1e-5)
    card = (tmp_path / "student.md").read_text()
    for text in (f"alpha = {clf.alpha:g}", "circle", "## Accuracy", "## Parity", "uint8 RGB, [N, 3, 32, 32]"):
        assert text in card, text


def test_export_with_heads_and_overridden_mix(run_dir, tmp_path):
    out = tmp_path / "heads.pt"
    export_checkpoint(run_dir / "checkpoint", out, "torchscript", count=8, alpha=0.25, beta=2.0, heads=True,
                      card=False, teacher_speed=False)
    module = torch.jit.load(str(out))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mixed, p_ce, p_kd = module(images)
    assert torch.allclose(mixed, 0.25 * p_ce + 0.75 * p_kd, atol=1e-6)
    out_logits = DHOClassifier.from_pretrained(run_dir / "checkpoint").student(images)
    assert torch.allclose(p_kd, (out_logits.kd_logits / 2.0).softmax(-1), atol=1e-5)
    assert not (tmp_path / "heads.md").exists()


def test_export_fails_loudly_and_leaves_nothing(run_dir, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_checkpoint(run_dir / "checkpoint", out, "onnx", count=4, atol=-1.0, card=False, teacher_speed=False)
    assert not out.exists()


def test_classifier_predicts_paths_pil_and_tensors(run_dir, synth_root):
    clf = DHOClassifier.from_pretrained(run_dir / "checkpoint")
    files = sorted((synth_root / "test" / "star").glob("*.png"))[:3]
    by_path = clf.predict(files, topk=2)
    by_pil = clf.predict([Image.open(f) for f in files], topk=2)
    assert by_path.labels == by_pil.labels and torch.equal(by_path.probs, by_pil.probs)
    assert len(by_path.labels) == 3 and all(len(row) == 2 for row in by_path.labels)
    assert torch.all(by_path.scores[:, 0] >= by_path.scores[:, 1])
    one = clf.predict(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert len(one.labels) == 1 and one.labels[0] in clf.classes and one.scores.shape == (1,)
    from dho.data.images import decode_image, eval_view

    ce_only = clf.predict(files, alpha=1.0)  # alpha overridden: h_CE alone
    with torch.no_grad():
        ce_logits = clf.student(torch.stack([eval_view(decode_image(f), 32) for f in files])).ce_logits
    assert torch.allclose(ce_only.probs, ce_logits.softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match="topk"):
        clf.predict(files, topk=99)


def test_export_command_line(run_dir, tmp_path, capsys):
    from dho.cli.app import main

    assert main(["export", str(run_dir / "checkpoint"), "--out", str(tmp_path / "m.onnx"), "--check", "8",
                 "--no-teacher-speed"]) == 0
    out = capsys.readouterr().out
    assert "parity: max |exported - PyTorch|" in out and (tmp_path / "m.md").is_file()
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")]) == 1


def test_export_carries_class_names_and_never_leaves_a_half_file(run_dir, tmp_path):
    import json

    from dho.ship.export import exported_metadata

    clf = DHOClassifier.from_pretrained(run_dir)
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        report = export_checkpoint(run_dir, tmp_path / fmt, fmt, count=4, card=False, teacher_speed=False)  # a directory
        assert report["path"] == str(tmp_path / fmt / name)
        meta = exported_metadata(report["path"])
        assert json.loads(meta["class_names"]) == clf.classes and meta["input"] == "uint8 RGB [N, 3, 32, 32]"
        assert float(meta["alpha"]) == pytest.approx(clf.alpha, abs=1e-6)
    good = tmp_path / "onnx" / "model.onnx"
    before = good.read_bytes()
    with pytest.raises(RuntimeError, match="was left as it was"):  # a failed check keeps the earlier export
        export_checkpoint(run_dir, good, "onnx", count=4, atol=-1.0, card=False, teacher_speed=False)
    assert good.read_bytes() == before and sorted(p.name for p in good.parent.iterdir()) == ["model.onnx"]
