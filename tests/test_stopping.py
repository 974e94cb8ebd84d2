"""Stopping early: a NaN loss term names itself and keeps the last good state; signals finish the
step; the CLI reports both in one line with a non-zero exit code."""

import importlib
import signal

import pytest
import torch

from conftest import sigterm_at_step
from dho.cli.app import main
from dho.loop import train
from dho.training.state import load_state
from dho.training.stopping import Interrupted, NonFiniteLoss, StoppedAtOnce, StopSignals, TrainingInterrupted

TRAIN = importlib.import_module("dho.loop")  # the training loop module


def _poison(monkeypatch, at_call: int, term: str = "kd_loss"):
    real, calls = TRAIN.method_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == at_call:
            out[term] = out[term] * float("nan")
            out["loss"] = out["ce_loss"] + out[term]
        return out

    monkeypatch.setattr(TRAIN, "method_loss", loss)


def test_a_nan_term_stops_the_run_with_the_last_good_state(tiny_cfg, tmp_path, monkeypatch):
    tiny_cfg = tiny_cfg.override({"optim.schedule": "constant"})  # steps 1-2 then do not depend on max_steps
    two = train(tiny_cfg.override({"optim.max_steps": 2, "out": str(tmp_path / "two")}))
    _poison(monkeypatch, 3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite kd_loss at step 3 \(.*kd_loss=nan.*state after step 2") as info:
        train(tiny_cfg)
    assert info.value.terms == ["kd_loss"] and info.value.step == 3
    state = load_state(tiny_cfg.out + "/state")
    assert state.step == 2 and state.skeleton["reason"].startswith("before the non-finite loss")
    # the saved weights are those after the two good steps
    model = {k[len("model."):]: v for k, v in state.tensors.items() if k.startswith("model.")}
    assert model and all(torch.equal(model[k], v) for k, v in two.student.state_dict().items())


def test_second_signal_stops_at_once_with_its_own_exit_code(tiny_cfg, monkeypatch, capsys):
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    # `dho train` sent SIGTERM twice exits 143, as one SIGTERM would (not Ctrl-C's 130)
    real = TRAIN.method_loss

    def twice(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(TRAIN, "method_loss", twice)
    args = ["train", "--out", tiny_cfg.out, *(f"{k}={v}" for k, v in (
        ("data.root", tiny_cfg.data.root), ("data.shots", 2), ("student.backbone", "resnet18"), ("student.image_size", 32),
        ("student.pretrained", "false"), ("teacher.kind", "synthetic"), ("teacher.adapter", "none"), ("threads", 2)))]
    assert main(args) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "dho: interrupted"


def test_cli_reports_interrupts_and_nan_in_one_line(synth_root, tmp_path, monkeypatch, capsys):
    args = ["train", "--out", str(tmp_path / "run"), f"data.root={synth_root}", "data.shots=2", "student.image_size=32",
            "optim.epochs=4", "optim.batch_size=8", "threads=2"]
    sigterm_at_step(monkeypatch, 2)
    assert main(args) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dho: stopped by SIGTERM after step 2 of 4") and f"dho train --resume {tmp_path / 'run'}" in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "test accuracy" in capsys.readouterr().out

    _poison(monkeypatch, 1, "ce_loss")
    assert main([*args[:2], str(tmp_path / "nan"), *args[3:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dho: error: non-finite ce_loss at step 1")


def test_stop_errors_survive_a_process_pool(tmp_path):
    import pickle  # what concurrent.futures does to a worker's exception

    for err in (NonFiniteLoss(3, ["kd_loss"], {"kd_loss": float("nan")}, tmp_path),
                TrainingInterrupted(signal.SIGTERM, 5, 6, tmp_path / "state" / "last", tmp_path)):
        back = pickle.loads(pickle.dumps(err))
        assert str(back) == str(err) and back.step == err.step
    for stop in (Interrupted(signal.SIGTERM), StoppedAtOnce(signal.SIGINT)):  # a job a signal stopped in a worker
        back = pickle.loads(pickle.dumps(stop))
        assert (type(back), back.signum, str(back)) == (type(stop), stop.signum, str(stop))


def test_a_pool_worker_always_saves_its_owner_stops_it_at_once(monkeypatch):
    """In a worker (``at_once`` off) more signals change nothing; StopSignals.request is a first stop
    that a signal after it does not escalate either; with no run in progress it says so."""
    assert StopSignals.request(signal.SIGTERM) is False
    monkeypatch.setattr(StopSignals, "at_once", False)
    with StopSignals() as stop:
        for _ in range(3):
            signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    monkeypatch.setattr(StopSignals, "at_once", True)
    with StopSignals() as stop:
        assert StopSignals.request(signal.SIGTERM) is True and stop.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # Ctrl-C to the group after the owner's request: still the first signal
        assert stop.signum == signal.SIGINT
        with pytest.raises(StoppedAtOnce):
            signal.raise_signal(signal.SIGINT)
    assert StopSignals.request(signal.SIGTERM) is False


@pytest.mark.parametrize("where", ["evaluation", "end save"])
def test_a_signal_after_the_last_step_keeps_the_run_resumable(tiny_cfg, tmp_path, monkeypatch, where):
    """checkpoint_every=0 saves at the end only; a SIGTERM in the final evaluation (or during that
    save) stops the run with its end state, and --resume finishes it without training again."""
    cfg = tiny_cfg.override({"checkpoint_every": 0})
    whole = train(cfg.override({"out": str(tmp_path / "whole")}))
    target = "own_size_logits" if where == "evaluation" else "_save_state"
    real = getattr(TRAIN, target)

    def signalled(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(TRAIN, target, signalled)
    with pytest.raises(TrainingInterrupted, match=r"after step 6 of 6; state saved") as info:
        train(cfg)
    assert info.value.step == 6 and load_state(tmp_path / "run" / "state").step == 6
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(TRAIN, target, real)
    steps = []
    monkeypatch.setattr(TRAIN, "method_loss", lambda *a, **k: steps.append(1))  # resuming at the end trains no step
    resumed = train(cfg, resume=True)
    assert not steps and resumed.results["test"] == whole.results["test"]
