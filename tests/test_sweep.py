import csv
import json

import pytest
import torch

from conftest import sigterm_at_step
from dho.config import ConfigError
from dho.experiments.sweep import SweepConfig, load_sweep, run_sweep
from dho.teachers import build_teacher
from dho.teachers.cache import TeacherCache
from dho.training.stopping import TrainingInterrupted


def _sweep_file(tmp_path, synth_root, methods="[ce, dho]", extra=""):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
sweep:
  methods: {methods}
  shots: [2]
  seeds: [0]
  teachers: {{zero-shot: {{}}, few-shot: {{teacher.adapter: tip}}}}
  teacher_methods: {{few-shot: [dho]}}
  workers: 1
{extra}
run:
  data: {{root: {synth_root}, num_views: 2, val_fraction: 0.2}}
  student: {{backbone: resnet18, pretrained: false, image_size: 32}}
  optim: {{epochs: 2, batch_size: 8}}
  eval: {{conflict_every: 1}}
  threads: 2
""")
    return path


def test_sweep_runs_resumes_and_gathers_one_table(tmp_path, synth_root):
    sweep, base = load_sweep(_sweep_file(tmp_path, synth_root))
    out = tmp_path / "out"
    rows_path = run_sweep(sweep, base, out)
    rows = list(csv.DictReader(rows_path.open()))
    runs = {(r["teacher"], r["method"]) for r in rows}
    assert runs == {("zero-shot", "teacher"), ("zero-shot", "ce"), ("zero-shot", "dho"), ("few-shot", "teacher"), ("few-shot", "dho")}
    for r in rows:
        assert 0.0 <= float(r["test"]) <= 1.0
    dho_dir = out / "zero-shot" / "2shot" / "seed0" / "dho"
    assert (dho_dir / "mixing_grid.csv").is_file()
    assert any("conflict" in json.loads(line) for line in (dho_dir / "metrics.jsonl").read_text().splitlines())
    # resuming trains nothing and rewrites the same table
    stamp = (dho_dir / "results.json").stat().st_mtime_ns
    run_sweep(sweep, base, out)
    assert (dho_dir / "results.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "sweep_time.json").read_text())["runs_trained"] == 0
    assert list(csv.DictReader(rows_path.open())) == rows


def test_sweep_file_errors_are_one_line(tmp_path, synth_root):
    with pytest.raises(ConfigError, match="unknown"):
        load_sweep(_sweep_file(tmp_path, synth_root, methods="[ce, dhoo]"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {}\n")
    with pytest.raises(ConfigError, match="sweep:"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="teacher_methods"):
        SweepConfig(teacher_methods={"nope": ("dho",)})
    # each shape a hand-written file gets wrong is one line naming what it should be, never a traceback
    for text, message in (("sweep: [1, 2]\nrun: {}\n", "each hold keys"),
                          ("sweep: {bogus: 4}\nrun: {}\n", r"unknown sweep key\(s\) \['bogus'\]"),
                          ("sweep: {teachers: [a]}\nrun: {}\n", "sweep.teachers maps a label")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_sweep(bad)
    bad.write_text("sweep: {shots: 4, seeds: 2}\nrun: {}\n")
    assert (load_sweep(bad)[0].shots, load_sweep(bad)[0].seeds) == ((4,), (2,))  # a single value is a list of one


def test_teacher_cache_save_load_round_trip(tmp_path, tiny_cfg):
    from dho.data.splits import splits_for

    teacher = build_teacher(tiny_cfg.teacher, splits_for(tiny_cfg.data).classes)
    cache = TeacherCache(teacher)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    first = cache.outputs(images, ["a", "b", "c"])
    cache.save(tmp_path / "store")
    loaded = TeacherCache.load(teacher, tmp_path / "store")
    again = loaded.outputs(torch.zeros_like(images), ["a", "b", "c"])  # replayed, not recomputed
    assert loaded.misses == 0 and torch.equal(first.features, again.features) and torch.equal(first.logits, again.logits)
    other = build_teacher(tiny_cfg.teacher.__class__(kind="synthetic", embed_dim=32), splits_for(tiny_cfg.data).classes)
    with pytest.raises(ValueError, match="teacher"):
        TeacherCache.load(other, tmp_path / "store")


def test_sweep_report_and_feature_tools_from_the_command_line(tmp_path, synth_root, capsys):
    from dho.cli.app import main

    out = tmp_path / "out"
    assert main(["-q", "sweep", str(_sweep_file(tmp_path, synth_root, methods="[ce_kd_logit, dho]")), "--out", str(out)]) == 0
    assert "results.csv" in capsys.readouterr().out
    assert main(["-q", "report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| DHO |" in printed and (out / "report" / "report.md").is_file()
    assert (out / "report" / "accuracy_vs_shots.png").stat().st_size > 5000
    run = out / "zero-shot" / "2shot" / "seed0" / "dho"
    assert main(["-q", "linear-eval", str(run)]) == 0 and (run / "linear_eval.json").is_file()
    assert main(["-q", "tsne", str(run), "--max-points", "40"]) == 0 and (run / "tsne_test.png").is_file()
    assert main(["-q", "report", str(tmp_path / "missing")]) == 1


def test_a_run_cut_short_resumes_from_its_state_when_the_sweep_is_run_again(tmp_path, synth_root, monkeypatch, caplog):
    import hashlib
    import logging

    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
sweep: {{methods: [dho], shots: [2], seeds: [0], workers: 1}}
run:
  data: {{root: {synth_root}, num_views: 2, val_fraction: 0.2}}
  student: {{backbone: resnet18, pretrained: false, image_size: 32}}
  optim: {{epochs: 6, batch_size: 8}}
  threads: 2
""")
    sweep, base = load_sweep(path)
    run_sweep(sweep, base, tmp_path / "whole")
    sigterm_at_step(monkeypatch, 4)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after step 4"):  # a signal stops the sweep
        run_sweep(sweep, base, tmp_path / "cut")
    run = "zero-shot/2shot/seed0/dho"
    assert (tmp_path / "cut" / run / "state").is_dir() and not (tmp_path / "cut" / run / "results.json").exists()
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dho.loop"):
        run_sweep(sweep, base, tmp_path / "cut")
    assert "resumed from" in caplog.text and "after step 4 of 6" in caplog.text  # it went on from the saved state

    def weights(root):
        return hashlib.sha256((root / run / "checkpoint" / "model.safetensors").read_bytes()).hexdigest()

    assert weights(tmp_path / "cut") == weights(tmp_path / "whole")
    assert json.loads((tmp_path / "cut" / run / "results.json").read_text())["test"] == \
        json.loads((tmp_path / "whole" / run / "results.json").read_text())["test"]


def test_a_grid_of_labeled_fractions(tmp_path, synth_root):
    """Floats below 1 in `shots` are labeled fractions (the paper's 1% / 10% ImageNet subsets)."""
    _, base = load_sweep(_sweep_file(tmp_path, synth_root), ["data.format=imagenet", "data.low_shot=file"])
    grid = SweepConfig(methods=("dho",), shots=(0.01, 16), seeds=(1,))
    cfgs = grid.runs(base, tmp_path / "out")
    frac, shots = cfgs[("zero-shot", 0.01, 1, "dho")], cfgs[("zero-shot", 16, 1, "dho")]
    assert (frac.data.shots, frac.data.fraction, frac.data.low_shot) == (None, 0.01, "file")
    assert frac.out == str(tmp_path / "out" / "zero-shot" / "1pct" / "seed1" / "dho")
    assert (shots.data.shots, shots.out.split("/")[-3]) == (16, "16shot")


@pytest.mark.parametrize("signame, to_group", [("SIGINT", True), ("SIGTERM", False), ("SIGTERM", True)],
                         ids=["ctrl-c", "kill-sweep", "kill-group"])
def test_a_stop_signal_stops_a_sweep_its_runs_save_and_no_queued_run_starts(tmp_path, synth_root, signame, to_group):
    """SIGINT to the sweep's process group (what Ctrl-C sends), SIGTERM to the sweep alone (`kill PID`,
    a service manager) or to the group (a batch scheduler): the runs in progress save their state and
    stop, no queued run starts, exit 128 + the signal, no worker left; the same command goes on later."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
sweep: {{methods: [ce, dho], shots: [2], seeds: [0, 1, 2, 3, 4, 5], workers: 2}}
run:
  teacher: {{kind: synthetic, adapter: none}}
  data: {{root: {synth_root}, val_fraction: 0.2}}
  student: {{backbone: resnet18, pretrained: false, image_size: 32}}
  optim: {{epochs: 40, batch_size: 8}}
""")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dho", "-q", "sweep", str(path), "--out", str(out)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("**/results.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        signum = getattr(signal, signame)
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        stopped_at = time.time()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + signum, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
        started = {p.parent: p.stat().st_mtime for p in out.glob("**/config.yaml") if p.parent != out}
        late = [str(run) for run, when in started.items() if when > stopped_at + 1.0]
        assert not late, late  # the runs a worker had taken off the queue before the signal did not start either
        finished = {p.parent for p in out.glob("**/results.json")}
        assert 1 <= len(finished) <= len(started) <= 4, (finished, started)  # the first ones and those running: not 12

        def trained(run):  # a step logged: a run stopped in its set-up has nothing to save
            return (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0

        unsaved = [str(run) for run in started if run not in finished and trained(run) and not (run / "state" / "last").is_dir()]
        assert not unsaved, (unsaved, err[-2000:])  # each run in progress saved its state before stopping
        time.sleep(2 * 1.0)  # PARENT_POLL_S: a worker the pool did not shut down would still be seen here
        left = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split("\n")
        assert not [row for row in left if row.strip() and "Z" not in row.split()[-1]], left
    finally:  # whatever failed, nothing of this sweep outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
