"""Fault injection on `dho sweep`: kill -9 and SIGTERM at named moments, rerun, compare.

A small sweep (synthetic folder data, synthetic teacher, ResNet-18 at 32 px; 2 methods, 200 steps
each, a state every 50) runs once uninterrupted. Then, for each moment, a fresh sweep directory is
started and sent the signal as soon as the moment comes (read from its log or its run directories);
the time until every worker of its session is gone is measured, the same command is run again to
the end, and the rerun's results.csv is compared with the uninterrupted one (every test score
equal). Moments: while the teacher store is filled, mid-training (after a periodic state), right
after a run's end-of-training state is saved (its final evaluation) and after the first finished
run, and a run's first steps before any state; SIGKILL and SIGTERM at each go to the sweep process
alone (`kill PID`), Ctrl-C's SIGINT to its process group mid-training.

    python bench/faults.py [--out runs/faults]      # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dho.data.synthetic import make_synthetic_folder
from timing import machine


def _saved(out: Path, reason: str) -> bool:
    """A run of the sweep has saved a training state for ``reason`` (periodic, end of training)."""
    for state in out.glob("*/*/*/*/state/last/state.json"):
        try:
            if json.loads(state.read_text()).get("reason") == reason:
                return True
        except (OSError, ValueError):  # being replaced right now
            continue
    return False


def _started(out: Path) -> bool:
    """A run of the sweep has written its config (it is training) and saved no state yet."""
    return any(out.glob("*/*/*/*/config.yaml")) and not any(out.glob("*/*/*/*/state/last"))


# The five moments of a sweep: (name, its test on the sweep directory and log).
PHASES: list[tuple[str, Callable[[Path, Path], bool]]] = [
    ("filling the teacher store", lambda out, log: "to compute" in log.read_text()),
    ("a run's first steps (no state yet)", lambda out, log: _started(out)),
    ("mid-training (after a periodic state)", lambda out, log: _saved(out, "periodic")),
    ("final evaluation", lambda out, log: _saved(out, "end of training")),
    ("after the first finished run", lambda out, log: any(out.glob("*/*/*/*/results.json"))),
]
# (name, signal, to the process group (Ctrl-C) or the sweep process alone (kill PID), the moment's test):
# kill -9 and SIGTERM at each moment, Ctrl-C mid-training.
MOMENTS: list[tuple[str, int, bool, Callable[[Path, Path], bool]]] = [
    (name, signum, False, ready) for signum in (signal.SIGKILL, signal.SIGTERM) for name, ready in PHASES
] + [(PHASES[2][0], signal.SIGINT, True, PHASES[2][1])]


def sweep_file(root: Path, data: Path) -> Path:
    path = root / "sweep.yaml"
    path.write_text(f"""sweep:
  methods: [ce_kd_logit, dho]
  shots: [4]
  seeds: [0]
  workers: 2
run:
  teacher: {{kind: synthetic, adapter: none}}
  student: {{backbone: resnet18, image_size: 32, pretrained: false}}
  data: {{root: {data}, shots: 4}}
  optim: {{epochs: 200, batch_size: 16}}
  checkpoint_every: 50
""")
    return path


def sweep(config: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dho", "sweep", str(config), "--out", str(out)], stdout=log.open("a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def interrupt(proc: subprocess.Popen, out: Path, log: Path, ready: Callable[[Path, Path], bool], signum: int,
              group: bool, limit: float = 600.0) -> tuple[float, int]:
    """Send ``signum`` to the sweep (or its process group) as soon as ``ready(out, log)``."""
    start = time.monotonic()
    while not ready(out, log):
        if proc.poll() is not None or time.monotonic() - start > limit:
            raise RuntimeError(f"the sweep ended before the moment came: {log}")
        time.sleep(0.02)
    at = time.monotonic() - start
    (os.killpg if group else os.kill)(proc.pid, signum)
    return at, proc.wait()


def left_behind(session: int) -> list[str]:
    """Processes of the sweep's session (its workers) still running after it ended."""
    ps = subprocess.run(["ps", "-eo", "pid,sid,stat,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [line.strip() for line in ps if int(line.split()[1]) == session and not line.split()[2].startswith("Z")]


def gone_after(session: int, limit: float = 30.0) -> float | None:
    """Seconds until no process of ``session`` is left (None: some still ran after ``limit``)."""
    start = time.monotonic()
    while left_behind(session):
        if time.monotonic() - start > limit:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


def scores(out: Path) -> dict[tuple, str]:
    with (out / "results.csv").open() as fh:
        return {(r["teacher"], r["shots"], r["seed"], r["method"]): r["test"] for r in csv.DictReader(fh) if r["method"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/faults")
    parser.add_argument("--signals", nargs="+", choices=("SIGKILL", "SIGTERM", "SIGINT"),
                        default=["SIGKILL", "SIGTERM", "SIGINT"], help="only the moments of these signals")
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
    print("| moment | signal, to | sent after | exit | workers gone after | rerun exit | results equal |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, signum, group, ready) in enumerate(MOMENTS):
        if signal.Signals(signum).name not in args.signals:
            continue
        out, log = root / f"cut{i}", root / f"cut{i}.log"
        proc = sweep(config, out, log)
        at, code = interrupt(proc, out, log, ready, signum, group)
        gone = gone_after(proc.pid)
        rerun = sweep(config, out, log).wait()
        got = scores(out) if (out / "results.csv").is_file() else {}
        equal = sum(got.get(k) == v for k, v in expected.items())
        sent = f"{signal.Signals(signum).name}, {'group' if group else 'sweep'}"
        after = f"{gone:.1f} s" if gone is not None else "still running after 30 s"
        print(f"| {name} | {sent} | {at:.1f} s | {code} | {after} | {rerun} | {equal}/{len(expected)} |", flush=True)


if __name__ == "__main__":
    main()
