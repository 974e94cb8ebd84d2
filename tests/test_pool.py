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
