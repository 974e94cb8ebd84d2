"""Runs that are safe to repeat: a finished or interrupted run is never replaced by accident, the
default directory gets a new name, and one process at a time writes a run directory."""

import pytest

from dho.cli.app import main
from dho.config import ConfigError
from dho.loop import train
from dho.training.rundir import RunDir, next_free_run_dir


def test_a_finished_run_is_not_overwritten(tiny_cfg):
    cfg = tiny_cfg.override({"optim.epochs": 1})
    first = train(cfg)
    stamp = (first.run_dir / "results.json").read_text()
    with pytest.raises(ConfigError, match="holds a finished run: give this run another out=DIR"):
        train(cfg)
    assert (first.run_dir / "results.json").read_text() == stamp
    (first.run_dir / "state").mkdir()
    (first.run_dir / "results.json").unlink()
    (first.run_dir / "state" / "last").mkdir()
    with pytest.raises(ConfigError, match="holds an interrupted run: continue it with dho train --resume"):
        train(cfg)
    again = train(cfg, overwrite=True)
    assert (again.run_dir / "results.json").is_file() and not (again.run_dir / "state").exists()


def test_one_process_writes_a_run_directory(tiny_cfg):
    holder = RunDir(tiny_cfg.out, writes=True)
    holder.lock()
    try:
        with pytest.raises(RuntimeError, match=r"is in use by another dho process \(pid \d+\)"):
            train(tiny_cfg)
    finally:
        holder.release()
    assert (train(tiny_cfg.override({"optim.epochs": 1})).run_dir / "results.json").is_file()


def test_the_default_run_directory_counts_up(tmp_path, synth_root, monkeypatch, capsys):
    assert next_free_run_dir(tmp_path / "runs" / "dho") == tmp_path / "runs" / "dho"
    monkeypatch.chdir(tmp_path)
    args = ["train", f"data.root={synth_root}", "data.shots=2", "student.image_size=32", "optim.epochs=1",
            "optim.batch_size=8", "threads=2"]
    assert main(args) == 0 and main(args) == 0
    out = capsys.readouterr().out
    assert "run directory: runs/dho\n" in out and "run directory: runs/dho2\n" in out
    assert next_free_run_dir("runs/dho").name == "dho3"
    assert main([*args, "--out", "runs/dho"]) == 2  # named: refused, not renamed
    assert "holds a finished run" in capsys.readouterr().err
    assert main([*args, "--out", "runs/dho", "--exist-ok"]) == 0


def test_tensorboard_events_hold_the_metrics_read_back_by_tensorboard(tiny_cfg):
    """tensorboard=true: every number of metrics.jsonl as a TensorBoard scalar, read back with
    tensorboard's own event reader."""
    import json

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_cfg.override({"tensorboard": True, "eval.eval_every": 2})).run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce_loss", "train/kd_loss", "train/lr", "val/mixed"} <= tags
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == \
        [(step, pytest.approx(loss, abs=1e-6)) for step, loss in losses]
