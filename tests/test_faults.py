"""Faults injected into whole commands, as a user meets them: a `dho sweep` killed with -9 in the
middle of training, and a training run whose disk fills up (a small tmpfs).

The moments inside one run (signals in the final phase, damaged states, crafted split files, cut
metrics lines, two writers on one run directory, ...) are tested beside the code they concern;
docs/reliability.md names each test, and `bench/faults.py` runs the sweep-level table.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dho.data.synthetic import make_synthetic_folder

SWEEP = """sweep:
  methods: [ce_kd_logit, dho]
  shots: [2]
  seeds: [0]
  workers: 2
run:
  teacher: {{kind: synthetic, adapter: none}}
  student: {{backbone: resnet18, image_size: 32, pretrained: false}}
  data: {{root: {data}, shots: 2}}
  optim: {{epochs: 40, batch_size: 8}}
  eval: {{batch_size: 64}}
  checkpoint_every: 10
"""


def _session(sid: int) -> list[str]:
    """Processes (not zombies) of session ``sid``."""
    rows = subprocess.run(["ps", "-eo", "sid,stat,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [r for r in rows if int(r.split()[0]) == sid and not r.split()[1].startswith("Z")]


def _sweep(config: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dho", "sweep", str(config), "--out", str(out)],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def _periodic_state(out: Path) -> bool:
    for state in out.glob("*/*/*/*/state/last/state.json"):
        try:
            if json.loads(state.read_text()).get("reason") == "periodic":
                return True
        except (OSError, ValueError):  # being replaced right now
            continue
    return False


def _scores(out: Path) -> dict:
    with (out / "results.csv").open() as fh:
        return {(r["method"], r["shots"], r["seed"]): r["test"] for r in csv.DictReader(fh) if r["method"] != "teacher"}


@pytest.mark.slow
def test_kill_9_of_a_sweep_mid_training_leaves_no_worker_and_the_rerun_equals_an_uninterrupted_one(tmp_path):
    data = make_synthetic_folder(tmp_path / "data", per_class={"train": 12, "test": 6}, seed=0)
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP.format(data=data))
    assert _sweep(config, tmp_path / "whole", tmp_path / "whole.log").wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()
    out, log = tmp_path / "cut", tmp_path / "cut.log"
    proc = _sweep(config, out, log)
    deadline = time.monotonic() + 300
    while not _periodic_state(out):
        assert proc.poll() is None and time.monotonic() < deadline, f"the sweep ended before a state was saved: {log.read_text()}"
        time.sleep(0.02)
    assert not any(out.glob("*/*/*/*/results.json")), "the moment came too late: a run had finished"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session(proc.pid), f"workers outlived the killed sweep: {_session(proc.pid)}"
    assert _sweep(config, out, log).wait(timeout=600) == 0, log.read_text()
    expected = _scores(tmp_path / "whole")
    assert len(expected) == 2 and _scores(out) == expected


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes_once_there_is_room(synth_root, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "150m")  # room for one training state (~130 MB), not for the next beside it
    try:
        train = [sys.executable, "-m", "dho", "train"]
        args = [f"data.root={synth_root}", "data.shots=2", "student.backbone=resnet18", "student.image_size=32",
                "optim.epochs=6", "optim.batch_size=8", f"out={disk / 'run'}", "threads=1", "teacher.adapter=none",
                "teacher.kind=synthetic", "student.pretrained=false", "checkpoint_every=2"]
        full = subprocess.run([*train, *args], capture_output=True, text=True, timeout=300)
        assert full.returncode == 1
        assert full.stderr.strip().splitlines()[-1].startswith("dho: error: no space left on the device"), full.stderr
        assert "Traceback" not in full.stderr
        state = disk / "run" / "state"
        assert sorted(p.name for p in state.iterdir()) == ["last"]  # no half-written state left beside it
        assert json.loads((state / "last" / "state.json").read_text())["reason"] == "periodic"
        subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True)
        resumed = subprocess.run([*train, "--resume", str(disk / "run")], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads((disk / "run" / "results.json").read_text())["steps"] == 6
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
