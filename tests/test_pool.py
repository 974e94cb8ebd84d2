import os
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import os, signal, time
    from dho.training.pool import executor

    def job(seconds):
        time.sleep(seconds)
        return os.getpid()

    if __name__ == "__main__":
        pool = executor(2)
        first = pool.submit(job, 0).result()  # the workers are up
        futures = [pool.submit(job, 120) for _ in range(4)]  # queued work an orphan would go on with
        time.sleep(0.5)
        print(" ".join(str(p.pid) for p in pool._processes.values()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its new parent to reap it is gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_workers_end_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    # run() returns once the workers, which hold the parent's pipes, are gone too
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    workers = [int(p) for p in done.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "workers outlived their killed parent"


OWNER = textwrap.dedent("""
    import os, signal, sys, time
    from dho.training.pool import executor

    def job(seconds):
        time.sleep(seconds)
        return os.getpid()

    if __name__ == "__main__":
        with executor(2) as pool:
            pids = {f.result() for f in [pool.submit(job, 1) for _ in range(2)]}  # both workers up, now idle
            print(" ".join(map(str, pids)), flush=True)
            if sys.argv[1] == "broken":  # a worker killed: the pool terminate()s the idle one on shutdown
                os.kill(pids.pop(), signal.SIGKILL)
                time.sleep(1)
            else:  # a job in progress, then SIGTERM to this process alone (kill PID)
                running = pool.submit(job, 120)
                time.sleep(1)
                os.kill(os.getpid(), signal.SIGTERM)
""")


def test_an_owner_stopped_or_a_broken_pool_ends_every_worker(tmp_path):
    """SIGTERM to a pool's owner stops a job in progress at once (it is no training run) and ends the
    owner as Ctrl-C would; a pool broken by a killed worker still shuts down (its idle workers end on
    the pool's SIGTERM). Neither hangs, and no worker is left."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    for case in ("owner", "broken"):
        done = subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, timeout=120)
        workers = [int(p) for p in done.stdout.split()]
        if case == "owner":  # Interrupted, a KeyboardInterrupt, uncaught in a plain script
            assert done.returncode == 1 and done.stderr.strip().endswith("Interrupted: SIGTERM"), done.stderr
        else:
            assert done.returncode == 0, done.stderr
        assert len(workers) == 2, done.stdout
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), (case, done.stderr)


def test_a_signal_while_the_pool_changes_itself_waits_for_the_change_to_end():
    """A stop signal during ``submit`` (which may start the pool's thread and processes; one cut in
    the middle cannot be shut down) acts once the submit is done: the first tells the workers and
    raises Interrupted, a second ends them at once."""
    import signal

    import pytest

    from dho.training.pool import _OwnerSignals
    from dho.training.stopping import Interrupted, StoppedAtOnce

    told: list[bool] = []
    signals = _OwnerSignals(told.append)
    with signals:
        with pytest.raises(Interrupted) as first, signals.deferred():
            signal.raise_signal(signal.SIGTERM)
            assert told == []  # not yet
        assert told == [False] and first.value.signum == signal.SIGTERM and not isinstance(first.value, StoppedAtOnce)
        with pytest.raises(StoppedAtOnce):
            signal.raise_signal(signal.SIGINT)
        assert told == [False, True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_worker_told_to_stop_while_it_starts_up_lives_on():
    """The owner may tell its workers to stop while one is still importing (a signal right after
    the pool started): the worker ignores the signal until it can handle it, so the pool does not
    break and the job runs."""
    from dho.training.pool import executor

    with executor(2) as pool:
        job = pool.submit(os.getpid)
        pool._tell(False)  # the spawned worker is still starting up
        assert job.result(timeout=120) > 0
