"""Fault injection on `dho sweep`: kill -9 and SIGTERM at named moments, rerun, compare.

A small sweep (synthetic folder data, synthetic teacher, ResNet-18 at 32 px; 2 methods x 2 seeds,
each run long enough to be caught mid-step) runs once uninterrupted. Then, for each moment, a fresh
sweep directory is started, the sweep's process group is sent the signal when its log first shows
the moment's line, the same command is run again to the end, and the rerun's results.csv is
compared with the uninterrupted one (every test score equal) and the process table is searched for
workers left behind. Moments: while the teacher store is filled, in the middle of a run's training,
right after a run's end-of-training state is saved (its final evaluation) and after the first run
finished; signals go to the sweep process alone (`kill PID`), Ctrl-C's SIGINT to its process group.

    python bench/faults.py [--out runs/faults]      # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dho.data.synthetic import make_synthetic_folder
from timing import machine

MOMENTS = [  # (name, signal, to the whole process group (Ctrl-C) or the sweep process only (kill PID), log marker)
    ("filling the teacher store", signal.SIGKILL, False, "to compute"),
    ("mid-training", signal.SIGKILL, False, "train dho: "),
    ("final evaluation", signal.SIGKILL, False, "(end of training)"),
    ("after the first finished run", signal.SIGKILL, False, "sweep: 1/"),
    ("mid-training", signal.SIGTERM, False, "train dho: "),
    ("final evaluation", signal.SIGTERM, False, "(end of training)"),
    ("mid-training", signal.SIGINT, True, "train dho: "),
]


def sweep_file(root: Path, data: Path) -> Path:
    path = root / "sweep.yaml"
    path.write_text(f"""sweep:
  methods: [ce_kd_logit, dho]
  shots: [4]
  seeds: [0, 1]
  workers: 2
run:
  teacher: {{kind: synthetic, adapter: none}}
  student: {{backbone: resnet18, image_size: 32, pretrained: false}}
  data: {{root: {data}, shots: 4}}
  optim: {{epochs: 40, batch_size: 16, max_steps: 240}}
  checkpoint_every: 60
""")
    return path


def sweep(config: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dho", "sweep", str(config), "--out", str(out)], stdout=log.open("a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def interrupt(proc: subprocess.Popen, log: Path, marker: str, signum: int, group: bool,
              limit: float = 600.0) -> tuple[float, int]:
    """Send ``signum`` to the sweep (or its process group) when ``marker`` first appears in its log."""
    start = time.monotonic()
    while marker not in log.read_text():
        if proc.poll() is not None or time.monotonic() - start > limit:
            raise RuntimeError(f"the sweep ended before {marker!r} appeared in {log}")
        time.sleep(0.05)
    at = time.monotonic() - start
    (os.killpg if group else os.kill)(proc.pid, signum)
    return at, proc.wait()


def left_behind(session: int) -> list[str]:
    """Processes of the sweep's session (its workers) still running after it ended."""
    ps = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [line.strip() for line in ps if int(line.split()[1]) == session]


def scores(out: Path) -> dict[tuple, str]:
    with (out / "results.csv").open() as fh:
        return {(r["teacher"], r["shots"], r["seed"], r["method"]): r["test"] for r in csv.DictReader(fh) if r["method"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/faults")
    args = parser.parse_args()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_folder(root / "data", per_class={"train": 24, "test": 8}, seed=0)
    config = sweep_file(root, data)
    started = time.monotonic()
    base = root / "whole"
    assert sweep(config, base, root / "whole.log").wait() == 0, f"the uninterrupted sweep failed: {root / 'whole.log'}"
    expected = scores(base)
    print(f"machine: {machine()}\nuninterrupted sweep: {len(expected)} runs in {time.monotonic() - started:.0f} s")
    print("| moment | signal, to | sent after | exit | rerun exit | runs equal | processes left |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, signum, group, marker) in enumerate(MOMENTS):
        out, log = root / f"cut{i}", root / f"cut{i}.log"
        proc = sweep(config, out, log)
        at, code = interrupt(proc, log, marker, signum, group)
        time.sleep(2.0)  # workers notice a dead parent within a second
        orphans = left_behind(proc.pid)
        rerun = sweep(config, out, log).wait()
        got = scores(out) if (out / "results.csv").is_file() else {}
        equal = sum(got.get(k) == v for k, v in expected.items())
        sent = f"{signal.Signals(signum).name}, {'group' if group else 'sweep'}"
        print(f"| {name} | {sent} | {at:.1f} s | {code} | {rerun} | {equal}/{len(expected)} | {len(orphans)} |", flush=True)


if __name__ == "__main__":
    main()
