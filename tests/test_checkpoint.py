import json

import pytest
import torch

from dho.checkpoint import load_student, save_checkpoint, update_mixing
from dho.config import StudentConfig
from dho.students import build_student


def test_round_trip_gives_identical_predictions(tmp_path):
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32, kd_head="cosine"), ["x", "y", "z"]).eval()
    student.alpha, student.beta = 0.35, 0.75
    save_checkpoint(student, tmp_path / "ckpt", templates=["a photo of a {}."], teacher={"id": "t"})
    loaded = load_student(tmp_path / "ckpt")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a, b = student.predict(images), loaded.predict(images)
    assert torch.equal(a.probs, b.probs) and a.labels == b.labels
    assert (loaded.alpha, loaded.beta, loaded.classnames) == (0.35, 0.75, ["x", "y", "z"])
    meta = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert meta["normalization"]["size"] == 32 and meta["templates"] == ["a photo of a {}."]
    assert "torch" in meta["versions"]
    # loading by the .safetensors file works too
    assert load_student(tmp_path / "ckpt" / "model.safetensors").classnames == ["x", "y", "z"]


def test_update_mixing_and_class_cross_check(tmp_path):
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["x", "y"])
    save_checkpoint(student, tmp_path / "ckpt")
    update_mixing(tmp_path / "ckpt", 0.6, 1.25)
    assert (load_student(tmp_path / "ckpt").alpha, load_student(tmp_path / "ckpt").beta) == (0.6, 1.25)
    meta_path = tmp_path / "ckpt" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["classes"].append("w")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="3 classes"):
        load_student(tmp_path / "ckpt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint metadata"):
        load_student(tmp_path)


def test_damaged_or_swapped_weights_are_refused(tmp_path):
    from dho.files import DamagedCheckpoint

    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["x", "y"])
    save_checkpoint(student, tmp_path / "a")
    weights = tmp_path / "a" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DamagedCheckpoint, match="does not match its metadata"):
        load_student(tmp_path / "a")
    (tmp_path / "a" / "model.json").write_text('{"format": "dho-stu')
    with pytest.raises(DamagedCheckpoint, match="not valid JSON"):
        load_student(tmp_path / "a")
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left


def test_integrity_metadata_cannot_be_edited_away(tmp_path):
    """No weights digest, or a timm argument that names a file: refused before anything is read."""
    from dho.files import DamagedCheckpoint

    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["x", "y"])
    save_checkpoint(student, tmp_path / "a")
    meta_path = tmp_path / "a" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "weights_sha256"}))
    with pytest.raises(DamagedCheckpoint, match="has no weights_sha256"):
        load_student(tmp_path / "a")
    meta["architecture"]["timm_kwargs"] = {"checkpoint_path": str(tmp_path / "elsewhere.pth")}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"timm_kwargs \['checkpoint_path'\]: not architecture settings"):
        load_student(tmp_path / "a")


def test_a_later_save_removes_temp_files_a_killed_writer_left(tmp_path):
    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["x", "y"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".tmpAb12Cd").write_bytes(b"\0" * 1000)  # safetensors' temp file, its writer killed
    (tmp_path / "a" / "notes.txt").write_text("kept")
    save_checkpoint(student, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.json", "model.safetensors", "notes.txt"]


def test_no_loader_executes_code():
    """Every torch.load asks for weights only; nothing evaluates YAML tags; nothing unpickles but
    the reader of CoOp's few-shot files, whose unpickler builds Dassl image records and nothing
    else (test_benchmarks feeds it a hostile file)."""
    import pathlib
    import re

    src = pathlib.Path(__file__).parents[1] / "src" / "dho"
    for path in src.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (path, call)
        assert not re.search(r"yaml\.load\(|yaml\.unsafe_load|yaml\.Loader\b", text), path
        if path.relative_to(src).as_posix() == "data/coop_files.py":
            assert re.search(r"def find_class.*\n.*if name == \"Datum\"", text) and "pickle.load(" not in text, path
            continue
        assert not re.search(r"import pickle|pickle\.loads?\(|Unpickler", text), path


def test_checkpoint_files_are_created_with_one_mode(tmp_path):
    """safetensors creates its file 0600; every file a checkpoint writes gets the mode a plain
    open() gives (0644 under the usual umask), with no temporary file left beside them."""
    import os
    import stat

    student = build_student(StudentConfig(backbone="resnet18", pretrained=False, image_size=32), ["x", "y"])
    save_checkpoint(student, tmp_path / "ckpt")
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"model.safetensors": 0o666 & ~mask, "model.json": 0o666 & ~mask}
