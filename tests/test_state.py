"""Training state: atomic directories with a marker, fallback to the previous state, and runs
interrupted by a signal and resumed that end bitwise equal to uninterrupted ones (CPU)."""

import importlib
import json
import logging
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sigterm_at_step
from dho.cli.app import main
from dho.files import DamagedCheckpoint, read_marker, write_dir_atomic
from dho.loop import train
from dho.training.state import _join, _split, load_state
from dho.training.stopping import TrainingInterrupted

TRAIN = importlib.import_module("dho.loop")  # the training loop module


def test_nested_states_round_trip_without_pickle():
    state = {"state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}}, "groups": [{"betas": (0.9, 0.99), "lr": 1e-3,
             "foreach": None, "params": [0]}], "rng": (3, np.arange(5, dtype=np.uint32), 1, 0.5)}
    tensors = {}
    skeleton = json.loads(json.dumps(_split(state, "x", tensors)))
    back = _join(skeleton, tensors)
    assert back["groups"] == state["groups"] and isinstance(back["groups"][0]["betas"], tuple)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["m"], state["state"][0]["m"])
    assert back["rng"][1].dtype == np.uint32 and np.array_equal(back["rng"][1], state["rng"][1])


def _write(parent, value, previous="previous"):
    return write_dir_atomic(parent, "last", {"a.txt": lambda p: p.write_text(value)}, {"step": len(value)}, previous=previous)


def test_directories_rotate_and_damage_is_detected(tmp_path):
    _write(tmp_path, "one")
    _write(tmp_path, "three")
    assert (tmp_path / "last" / "a.txt").read_text() == "three" and (tmp_path / "previous" / "a.txt").read_text() == "one"
    assert read_marker(tmp_path / "last")["step"] == 5
    assert not list(tmp_path.glob(".*"))  # no partial directories left behind
    (tmp_path / "last" / "a.txt").write_text("thrEe")
    with pytest.raises(DamagedCheckpoint, match="checksum mismatch"):
        read_marker(tmp_path / "last")
    (tmp_path / "previous" / "COMPLETE").unlink()
    with pytest.raises(DamagedCheckpoint, match="no COMPLETE marker"):
        read_marker(tmp_path / "previous")
    # a marker edited to list nothing (or not every file) does not vouch for the files
    (tmp_path / "last" / "a.txt").write_text("three")
    marker = json.loads((tmp_path / "last" / "COMPLETE").read_text())
    for files, message in (({}, "lists no checksums"), ({"b.txt": "0" * 64}, "does not list a.txt")):
        (tmp_path / "last" / "COMPLETE").write_text(json.dumps({**marker, "files": files}))
        with pytest.raises(DamagedCheckpoint, match=message):
            read_marker(tmp_path / "last")


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    _write(tmp_path, "one")

    def full_disk(path):
        raise OSError(28, "No space left on device", str(path))

    with pytest.raises(OSError, match="No space"):
        write_dir_atomic(tmp_path, "last", {"a.txt": full_disk}, previous="previous")
    assert (tmp_path / "last" / "a.txt").read_text() == "one" and not (tmp_path / "previous").exists()
    assert not list(tmp_path.glob(".*"))


def _assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("extra", [
    {},
    # dropout in the KD head draws from torch's RNG every step; the best epoch is kept
    {"student.kd_head": "mlp", "student.mlp_dropout": 0.5, "eval.eval_every": 1, "eval.keep": "best"},
], ids=["dho", "dropout-keep-best"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_cfg, tmp_path, monkeypatch, caplog, extra):
    # timm's tiny test network (BatchNorm included): each of the four runs takes well under a second
    cfg = tiny_cfg.override({"checkpoint_every": 2, "student.backbone": "test_efficientnet", **extra})
    whole = train(cfg.override({"out": str(tmp_path / "whole")}))

    run, handler = tmp_path / "cut", signal.getsignal(signal.SIGTERM)
    sigterm_at_step(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted, match="SIGTERM after step 5 of 6") as info:
        train(cfg.override({"out": str(run)}))
    monkeypatch.undo()
    assert info.value.step == 5 and signal.getsignal(signal.SIGTERM) is handler  # handlers restored
    assert load_state(run / "state").step == 5 and read_marker(run / "state" / "previous")["step"] == 4
    assert not (run / "results.json").exists()

    damaged = tmp_path / "damaged"  # a copy whose newest state is cut short: it resumes from step 4
    shutil.copytree(run, damaged)
    weights = damaged / "state" / "last" / "tensors.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    resumed = train(cfg.override({"out": str(run)}), resume=True)
    _assert_same_weights(whole.student, resumed.student)
    assert resumed.results["test"] == whole.results["test"] and resumed.results["epochs_kept"] == whole.results["epochs_kept"]
    assert not (run / "state").exists()  # finished: the student is checkpoint/
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]

    with caplog.at_level(logging.WARNING, logger="dho.training.state"):
        fallback = train(cfg.override({"out": str(damaged)}), resume=True)
    assert "falling back to the previous state" in caplog.text and "step 4" in caplog.text
    _assert_same_weights(whole.student, fallback.student)


def test_resume_refuses_a_changed_config_and_a_finished_run(tiny_cfg, monkeypatch):
    sigterm_at_step(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train(tiny_cfg)
    monkeypatch.undo()
    config_file = Path(tiny_cfg.out) / "config.yaml"
    saved = config_file.read_text()
    with pytest.raises(ValueError, match=r"config changed since the run started \(optim.lr: 0.001 -> 0.002\)"):
        train(tiny_cfg.override({"optim.lr": 2e-3}), resume=True)
    assert config_file.read_text() == saved  # a refused resume leaves the run as it was
    train(tiny_cfg.override({"threads": 1}), resume=True)  # where and how fast it runs may change
    with pytest.raises(FileNotFoundError, match="nothing to resume .*the run finished"):
        train(tiny_cfg, resume=True)


def test_resume_refuses_an_image_whose_content_changed(tiny_cfg, synth_root, tmp_path, monkeypatch):
    """Same paths and labels, one labeled image re-encoded: the resumed run is refused, naming the split."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    cfg = tiny_cfg.override({"data.root": str(root)})
    sigterm_at_step(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    monkeypatch.undo()
    labeled = json.loads((Path(cfg.out) / "splits.json").read_text())["labeled"][0][0]
    image = Image.open(root / labeled)
    image.rotate(90).save(root / labeled, compress_level=0)  # another picture, another size
    with pytest.raises(ValueError, match=r"dataset changed since .*labeled: an image's content \(its size\) changed"):
        train(cfg, resume=True)


def test_resume_without_config_yaml_uses_the_config_saved_with_the_state(tiny_cfg, monkeypatch, caplog):
    sigterm_at_step(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train(tiny_cfg)
    monkeypatch.undo()
    (Path(tiny_cfg.out) / "config.yaml").unlink()
    assert main(["train", "--resume", tiny_cfg.out]) == 0
    assert (Path(tiny_cfg.out) / "results.json").is_file() and (Path(tiny_cfg.out) / "config.yaml").is_file()
    assert "config.yaml is missing: resuming with the config saved in" in caplog.text


def test_a_cut_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    from dho.training.rundir import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="dho.training.rundir"):
        MetricsLog(path, keep_until=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert "1 line(s) were not whole records" in caplog.text
