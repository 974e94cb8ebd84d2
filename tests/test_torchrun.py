"""torchrun beyond one launcher: two nodes on localhost (static rendezvous, gloo), and a run
stopped by a signal under torchrun and resumed there, each against the run it must equal."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from dho.checkpoint import load_student

pytestmark = pytest.mark.slow

# `dho` under torchrun, with SIGTERM raised on one rank while its loss of step STOP_AT is computed;
# each rank says how many steps it trained
STOPPING = textwrap.dedent("""
    import atexit, os, signal, sys
    import dho.loop as loop
    from dho.cli import main

    real, calls = loop.method_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(os.environ.get("STOP_AT", "0")) and os.environ["RANK"] == os.environ["STOP_RANK"]:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    loop.method_loss = loss
    atexit.register(lambda: print(f"rank {os.environ['RANK']}: {len(calls)} steps", file=sys.stderr))
    sys.exit(main(sys.argv[1:]))
""")


def _common(synth_root) -> list[str]:
    return [f"data.root={synth_root}", "data.shots=2", "student.backbone=resnet18", "student.pretrained=false",
            "teacher.kind=synthetic", "teacher.adapter=none", "student.image_size=32", "optim.epochs=6",
            "optim.batch_size=8", "eval.batch_size=16", "threads=1", "eval.teacher=false", "precision=fp32",
            "checkpoint_every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _weights(run) -> dict[str, torch.Tensor]:
    return load_student(run / "checkpoint").state_dict()


def test_two_nodes_on_localhost_train_as_one_launcher_with_two_processes(synth_root, tmp_path):
    """`--nnodes 2` with one launcher per node (as on a cluster, here both on 127.0.0.1): the
    same global batch split over the same two ranks as `--standalone --nproc_per_node 2`."""
    common = _common(synth_root)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "dho", "-q", "train", f"out={tmp_path / 'nodes'}", *common],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-2000:]
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dho", "-q", "train", f"out={tmp_path / 'one'}", *common],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    nodes_results = json.loads((tmp_path / "nodes" / "results.json").read_text())
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert nodes_results["distributed"]["world_size"] == 2
    assert nodes_results["distributed"]["param_checksums"] == one_results["distributed"]["param_checksums"]
    assert nodes_results["test"] == one_results["test"]
    for (name, a), b in zip(_weights(tmp_path / "nodes").items(), _weights(tmp_path / "one").values()):
        assert torch.equal(a, b), name


def test_a_run_stopped_under_torchrun_resumes_there_to_the_uninterrupted_result(synth_root, tmp_path):
    """SIGTERM on rank 1 during step 3: every rank stops after that step, rank 0 saves the state,
    and `torchrun ... dho train --resume RUN` ends with the weights and scores of an uninterrupted
    two-process run, bit for bit on the CPU."""
    common = _common(synth_root)
    script = tmp_path / "dho_stopping.py"
    script.write_text(STOPPING)

    def torchrun(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), "-q", "train", *args], env=_env(STOP_RANK="1", **env),
                              capture_output=True, text=True, timeout=600)

    cut = torchrun(f"out={tmp_path / 'cut'}", *common, STOP_AT="3")
    assert cut.returncode != 0 and "stopped by SIGTERM after step 3 of" in cut.stderr, cut.stderr[-2000:]
    assert (tmp_path / "cut" / "state" / "last").is_dir() and not (tmp_path / "cut" / "results.json").exists()
    resumed = torchrun("--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rank 0: 3 steps" in resumed.stderr and "rank 1: 3 steps" in resumed.stderr  # steps 4-6 only
    whole = torchrun(f"out={tmp_path / 'whole'}", *common)
    assert whole.returncode == 0 and "rank 1: 6 steps" in whole.stderr, whole.stderr[-2000:]
    a = json.loads((tmp_path / "cut" / "results.json").read_text())
    b = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert a["test"] == b["test"] and a["distributed"]["param_checksums"] == b["distributed"]["param_checksums"]
    for (name, x), y in zip(_weights(tmp_path / "cut").items(), _weights(tmp_path / "whole").values()):
        assert torch.equal(x, y), name
